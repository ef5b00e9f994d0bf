// SPDX-License-Identifier: Apache-2.0
/// @file trainer.hpp
/// @brief A training run (spec §6; arXiv:2412.19437 §4.2): batches of packed sequences from a
/// TextDataset, the loss gradient (model_backward.hpp), global-norm clipping, AdamW at the
/// scheduled learning rate, then aux-loss-free balancing of every MoE layer's
/// e_score_correction_bias from the step's expert loads; validation loss and per-source expert
/// activation; checkpoints that resume exactly.
///
/// One step s, batch size B(s), sequence length L:
///   for b < B(s): window(s, b) = L + 1 tokens → tokens [0, L), targets [1, L + 1)
///   g = ∇(mean CE + α·balance + λ·L_mtp);  g ← clip(g, c);  θ ← AdamW(θ, g, lr(s));  bias_l ←
///   bias_l + γ·sign(…)
/// B(s) ramps linearly from batch_ramp_start to batch_size over batch_ramp_steps (DeepSeek-V3
/// ramps 3072 → 15360 sequences over its first 469B tokens). A curriculum (TrainOptions::stages)
/// changes the learning rate's scale, the data mix and L from given steps on.
///
/// Checkpoints: `dir`/checkpoint-<step>/ holds config.json + model.safetensors (a Hugging Face
/// checkpoint, loadable by model::Model and transformers), optimizer.safetensors (AdamW's
/// moments, `<tensor>.exp_avg` / `.exp_avg_sq`, F32) and trainer_state.json (step, AdamW step,
/// the caller's run description). It is written into a temporary folder, every file fsynced,
/// then renamed into place — so an interrupted save leaves the previous checkpoints intact —
/// and only the newest `keep_checkpoints` are kept. Batches are a pure function of (seed,
/// step), so a resumed run computes bit for bit the steps the uninterrupted run would have.
///
/// Precision (TrainOptions::precision): kFp32 computes with the fp32 weights (the mode of the
/// checks); kBf16 is mixed precision — the forward and backward read a bf16 copy of the fp32
/// master weights (Bf16Weights, refreshed after every update) and keep bf16 residual streams,
/// while gradients, AdamW and its moments, the correction biases and checkpoints stay fp32
/// (model_backward.hpp). Validation uses the same weights as training.
#pragma once

#include <deepmoe/train/data.hpp>
#include <deepmoe/train/mixed_precision.hpp>
#include <deepmoe/train/model_backward.hpp>
#include <deepmoe/train/optimizer.hpp>
#include <deepmoe/train/parameters.hpp>

#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// A curriculum stage: from step `start` on (until the next stage), the learning rate is
/// `lr_scale` times the schedule's, the sources are drawn with `weights` (empty: the dataset's)
/// and sequences are `seq_len` tokens (0: TrainOptions::seq_len).
struct Stage {
  std::int64_t start = 0;            ///< first step of the stage
  double lr_scale = 1.0;             ///< factor on the schedule's learning rate
  std::vector<double> weights = {};  ///< the sources' weights (one each), or empty
  std::int64_t seq_len = 0;          ///< tokens per sequence, or 0 for TrainOptions::seq_len
};

/// The precision a run computes in (file comment).
enum class Precision {
  kFp32,  ///< fp32 weights and activations
  kBf16,  ///< bf16 weights and activations, fp32 master weights, gradients and accumulation
};

/// How a run trains (defaults: small-model values; DeepSeek-V3's are in LrSchedule/AdamWParams).
struct TrainOptions {
  std::int64_t batch_size = 8;        ///< sequences per step after the ramp
  std::int64_t batch_ramp_start = 0;  ///< sequences per step at step 0 (0: no ramp)
  std::int64_t batch_ramp_steps = 0;  ///< steps of the linear batch-size ramp
  std::int64_t seq_len = 128;         ///< tokens per sequence (L)
  /// the learning rate per step (small-model values; DeepSeek-V3's are LrSchedule's defaults)
  LrSchedule lr{.peak = 3e-3, .final = 3e-4, .warmup = 50, .decay_start = 50, .decay_steps = 950};
  AdamWParams adamw{};               ///< β1, β2, ε, weight decay
  double clip = 1.0;                 ///< global gradient-norm bound
  double bias_update_speed = 0.001;  ///< γ of aux-loss-free balancing
  double balance_alpha = 0.0;        ///< α of the sequence-wise balance loss (V3: 1e-4)
  double mtp_lambda = 0.3;           ///< λ of the MTP loss, for parameters with an MTP module
  int keep_checkpoints = 2;          ///< newest checkpoints kept by save()
  Precision precision = Precision::kFp32;  ///< what the forward and backward compute in
  /// gradient checkpointing (LossOptions::recompute); false keeps every layer's activations
  bool recompute = true;
  std::vector<Stage> stages = {};  ///< the curriculum, by increasing start (empty: none)

  /// The stage in force at `step` (a default stage before the first one).
  Stage stage_at(std::int64_t step) const {
    Stage s;
    for (Stage const& x : stages)
      if (x.start <= step) {
        s = x;
      }
    if (s.seq_len <= 0) {
      s.seq_len = seq_len;
    }
    return s;
  }

  /// B(s) (file comment).
  std::int64_t batch_at(std::int64_t step) const {
    if (batch_ramp_start <= 0 || batch_ramp_steps <= 0 || step >= batch_ramp_steps) {
      return batch_size;
    }
    return batch_ramp_start + (batch_size - batch_ramp_start) * step / batch_ramp_steps;
  }
};

/// What one step did.
struct StepReport {
  std::int64_t step = 0;             ///< the step's index (0-based)
  double loss = 0;                   ///< mean training cross-entropy before the update (nats)
  double balance_loss = 0;           ///< the sequence-wise balance term (α included)
  double mtp_loss = 0;               ///< L_mtp (λ not included; 0 without an MTP module)
  double lr = 0;                     ///< learning rate applied
  double grad_norm = 0;              ///< global gradient norm before clipping
  std::int64_t tokens = 0;           ///< tokens in the batch
  double seconds = 0;                ///< wall time of the step
  std::size_t activation_bytes = 0;  ///< activations kept for the backward (LossStats)
  double imbalance = 0;              ///< max over MoE layers of max_load / mean_load (1: balanced)
  /// [L][E] tokens per expert per layer (empty rows for dense layers), then the MTP module's
  std::vector<std::vector<std::int64_t>> expert_load;
  std::vector<std::int64_t> sequences;  ///< [sources] the batch's sequences from each source
};

/// Validation results, per source of the dataset.
struct EvalReport {
  std::vector<double> loss;          ///< [sources] mean cross-entropy (nats)
  std::vector<std::int64_t> tokens;  ///< [sources] targets evaluated
  /// [sources][L][E] tokens each expert received (empty rows for dense layers)
  std::vector<std::vector<std::vector<std::int64_t>>> expert_load;
  /// Token-weighted mean loss over every source.
  double mean() const {
    double s = 0, n = 0;
    for (std::size_t i = 0; i < loss.size(); ++i) {
      s += loss[i] * static_cast<double>(tokens[i]);
      n += static_cast<double>(tokens[i]);
    }
    return n > 0 ? s / n : 0.0;
  }
};

/// A training run of a model of config C (file comment). Move-only.
template <config::ModelConfig C>
class Trainer {
 public:
  Trainer() = default;

  /// A run that starts at step 0 from `params`.
  /// @returns invalid_argument for a batch size or sequence length < 1, a sequence length
  ///          beyond max_position_embeddings, a curriculum whose starts do not increase (or
  ///          with a negative scale or length), more than one MTP module, or a trained tensor
  ///          without a gradient.
  static Status create(Parameters<C> params, TrainOptions const& o, Trainer& out) {
    C const& cfg = params.config();
    if (o.batch_size < 1 || o.seq_len < 1 || o.batch_ramp_start < 0 || o.batch_ramp_steps < 0) {
      return invalid_argument(
          "Trainer: batch_size and seq_len must be >= 1, the batch ramp's "
          "start and steps >= 0");
    }
    for (std::size_t i = 0; i < o.stages.size(); ++i) {
      Stage const& st = o.stages[i];
      if ((i > 0 && st.start <= o.stages[i - 1].start) || st.start < 0 || !(st.lr_scale >= 0) ||
          st.seq_len > cfg.max_position_embeddings || st.seq_len < 0) {
        return invalid_argument("Trainer: curriculum stage " + std::to_string(i) + " (start " +
                                std::to_string(st.start) +
                                "): starts must increase, lr_scale ≥ 0, 0 ≤ seq_len ≤ "
                                "max_position_embeddings");
      }
    }
    if (o.seq_len > cfg.max_position_embeddings) {
      return invalid_argument("Trainer: seq_len " + std::to_string(o.seq_len) +
                              " > max_position_embeddings " +
                              std::to_string(cfg.max_position_embeddings) + " of the config");
    }
    Trainer t;
    t.o_ = o;
    t.p_ = std::move(params);
    if (cfg.num_nextn_predict_layers > 1 && !t.p_.weights().mtp.empty()) {
      return invalid_argument("Trainer: " + std::to_string(cfg.num_nextn_predict_layers) +
                              " MTP modules; training supports depth 1 (DeepSeek-V3's)");
    }
    t.g_ = zero_model_grads<C>(t.p_.config(), !t.p_.weights().mtp.empty());
    if (o.precision == Precision::kBf16) {
      t.bf16_ = std::make_unique<Bf16Weights<C>>();
      DEEPMOE_RETURN_IF_ERROR(Bf16Weights<C>::create(t.p_, *t.bf16_));
      t.sb_ = std::make_unique<LossScratch<Compute>>(t.bf16_->config());
    } else {
      t.s_ = std::make_unique<LossScratch<C>>(t.p_.config());
    }
    auto named = t.g_.named();
    std::vector<std::size_t> sizes;
    for (auto const& tensor : t.p_.tensors()) {
      if (!tensor.trained) {  // the correction biases (balancing) and mirrors (sync_copies)
        if (tensor.name.ends_with("mlp.gate.e_score_correction_bias")) {
          int const layer = std::stoi(tensor.name.substr(std::string("model.layers.").size()));
          t.biases_.push_back({layer, tensor.value});
        }
        continue;
      }
      auto const it = std::find_if(named.begin(), named.end(),
                                   [&](NamedGrad const& n) { return n.name == tensor.name; });
      if (it == named.end() || it->grad.size() != tensor.value.size()) {
        return invalid_argument("Trainer: no gradient for '" + tensor.name + "'");
      }
      t.refs_.push_back({tensor.value, it->grad, tensor.decay});
      t.grads_.push_back(it->grad);
      t.names_.push_back(tensor.name);
      sizes.push_back(tensor.value.size());
    }
    t.adam_ = AdamW(o.adamw, sizes);
    out = std::move(t);
    return {};
  }

  /// Resumes the newest checkpoint under `dir` (file comment).
  /// @param o    the options to continue with (the caller compares `run` with its own)
  /// @param out  the trainer, at the checkpoint's step
  /// @param run  out: the run description the checkpoint was saved with
  /// @param cfg  the config (the checkpoint's config.json, for Dynamic configs)
  /// @returns kIoError when `dir` holds no checkpoint or a file cannot be read;
  ///          Parameters::load's and create's errors; invalid_argument for a malformed
  ///          trainer_state.json or optimizer.safetensors, or a missing or misshaped moment.
  static Status resume(std::string const& dir, TrainOptions const& o, Trainer& out,
                       nlohmann::json& run, C const& cfg = {}) {
    namespace fs = std::filesystem;
    std::string const ckpt = latest_checkpoint(dir);
    if (ckpt.empty()) {
      return Status(StatusCode::kIoError, dir + ": no checkpoint-<step> folder to resume");
    }
    Parameters<C> p;
    DEEPMOE_RETURN_IF_ERROR(Parameters<C>::load(ckpt, cfg.num_nextn_predict_layers > 0, p, cfg));
    nlohmann::json state;
    DEEPMOE_RETURN_IF_ERROR(
        io::read_json_file((fs::path(ckpt) / "trainer_state.json").string(), state));
    Trainer t;
    DEEPMOE_RETURN_IF_ERROR(create(std::move(p), o, t));
    io::SafetensorsFile f;
    std::string const opt_path = (fs::path(ckpt) / "optimizer.safetensors").string();
    DEEPMOE_RETURN_IF_ERROR(io::SafetensorsFile::open(opt_path, f));
    std::vector<std::vector<float>> mv(2 * t.names_.size());
    std::vector<std::span<float const>> m, v;
    for (std::size_t i = 0; i < t.names_.size(); ++i) {
      for (int k = 0; k < 2; ++k) {
        std::string const name = t.names_[i] + (k == 0 ? ".exp_avg" : ".exp_avg_sq");
        io::TensorInfo const* info = f.find(name);
        std::vector<float>& dst = mv[2 * i + static_cast<std::size_t>(k)];
        dst.resize(t.refs_[i].value.size());
        if (info == nullptr || info->dtype != io::Dtype::kF32 ||
            info->numel() != static_cast<std::int64_t>(dst.size())) {
          return invalid_argument(opt_path + ": no F32 tensor '" + name + "' of " +
                                  std::to_string(dst.size()) + " values");
        }
        std::memcpy(dst.data(), f.bytes(*info).data(), dst.size() * sizeof(float));
        (k == 0 ? m : v).push_back(dst);
      }
    }
    DEEPMOE_RETURN_IF_ERROR(t.adam_.restore(state.value("adamw_steps", std::int64_t{0}), m, v));
    t.step_ = state.value("step", std::int64_t{0});
    run = state.value("run", nlohmann::json::object());
    out = std::move(t);
    return {};
  }

  /// The folder of the newest complete checkpoint under `dir`, or "" when there is none.
  static std::string latest_checkpoint(std::string const& dir) {
    auto const all = checkpoints(dir);
    return all.empty() ? std::string() : all.back().second;
  }

  /// One optimizer step on the batches of `data` for the current step (file comment).
  /// @returns the dataset's and model_loss's errors; invalid_argument for a non-finite loss or
  ///          gradient norm (the weights are left unchanged).
  Status step(TextDataset const& data, StepReport& r) {
    auto const t0 = std::chrono::steady_clock::now();
    Stage const stage = o_.stage_at(step_);
    std::int64_t const B = o_.batch_at(step_), L = stage.seq_len;
    windows_.resize(static_cast<std::size_t>(B));
    std::vector<Example> batch;
    std::vector<std::int64_t> drawn(data.sources(), 0);
    for (std::int64_t b = 0; b < B; ++b) {
      std::size_t source = 0;
      auto& w = windows_[static_cast<std::size_t>(b)];
      DEEPMOE_RETURN_IF_ERROR(data.window(step_, b, L, w, source, stage.weights));
      ++drawn[source];
      batch.push_back({VectorView<std::int32_t const>(w.data(), L),
                       VectorView<std::int32_t const>(w.data() + 1, L)});
    }
    g_.zero();
    LossStats stats;
    DEEPMOE_RETURN_IF_ERROR(loss(stats, batch, &g_));
    double const norm = clip_grad_norm(grads_, o_.clip);
    if (!std::isfinite(stats.loss) || !std::isfinite(norm)) {
      return invalid_argument("step " + std::to_string(step_) + ": loss " +
                              std::to_string(stats.loss) + ", gradient norm " +
                              std::to_string(norm) +
                              " — HINT: a lower learning rate or a longer warmup");
    }
    double const lr = o_.lr(step_) * stage.lr_scale;
    DEEPMOE_RETURN_IF_ERROR(adam_.step(refs_, lr));
    p_.sync_copies();
    r = {};
    r.imbalance = 1.0;
    for (auto const& [layer, bias] : biases_) {  // layers that ran (not an MTP module at λ = 0)
      auto const l = static_cast<std::size_t>(layer);
      if (l < stats.expert_load.size() && stats.expert_load[l].size() == bias.size()) {
        static_cast<void>(update_correction_bias(bias, stats.expert_load[l], o_.bias_update_speed));
        r.imbalance = std::max(r.imbalance, imbalance(stats.expert_load[l]));
      }
    }
    if (bf16_) {
      bf16_->refresh();
    }
    for (std::size_t l = 0; biases_.empty() && l < stats.expert_load.size(); ++l) {
      if (!stats.expert_load[l].empty()) {  // softmax / greedy routing: report, no bias
        r.imbalance = std::max(r.imbalance, imbalance(stats.expert_load[l]));
      }
    }
    r.step = step_++;
    r.loss = stats.loss;
    r.balance_loss = stats.balance_loss;
    r.mtp_loss = stats.mtp_loss;
    r.lr = lr;
    r.grad_norm = norm;
    r.tokens = stats.tokens;
    r.activation_bytes = stats.activation_bytes;
    r.expert_load = std::move(stats.expert_load);
    r.sequences = std::move(drawn);
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return {};
  }

  /// Validation loss and expert activation per source over at most `max_windows` windows of
  /// L + 1 tokens per source (fewer when its validation text is shorter; none gives loss 0
  /// and tokens 0).
  /// @returns model_loss's and TextDataset::validation_window's errors.
  Status evaluate(TextDataset const& data, std::int64_t max_windows, EvalReport& r) {
    std::int64_t const L = o_.seq_len;
    r = {};
    for (std::size_t i = 0; i < data.sources(); ++i) {
      std::int64_t const n = std::min(max_windows, data.validation_windows(i, L));
      double sum = 0;
      std::int64_t count = 0;
      std::vector<std::vector<std::int64_t>> load;
      for (std::int64_t j0 = 0; j0 < n; j0 += o_.batch_size) {
        std::int64_t const nb = std::min(o_.batch_size, n - j0);
        windows_.resize(static_cast<std::size_t>(nb));
        std::vector<Example> batch;
        for (std::int64_t b = 0; b < nb; ++b) {
          auto& w = windows_[static_cast<std::size_t>(b)];
          DEEPMOE_RETURN_IF_ERROR(data.validation_window(i, j0 + b, L, w));
          batch.push_back({VectorView<std::int32_t const>(w.data(), L),
                           VectorView<std::int32_t const>(w.data() + 1, L)});
        }
        LossStats st;
        DEEPMOE_RETURN_IF_ERROR(loss(st, batch, nullptr));
        sum += st.loss * static_cast<double>(st.targets);
        count += st.targets;
        load.resize(st.expert_load.size());
        for (std::size_t l = 0; l < load.size(); ++l) {
          load[l].resize(st.expert_load[l].size(), 0);
          for (std::size_t e = 0; e < load[l].size(); ++e)
            load[l][e] += st.expert_load[l][e];
        }
      }
      r.loss.push_back(count > 0 ? sum / static_cast<double>(count) : 0.0);
      r.tokens.push_back(count);
      r.expert_load.push_back(std::move(load));
    }
    return {};
  }

  /// Saves `dir`/checkpoint-<steps()> (file comment) with `run` (the caller's description of the
  /// run: data, options) in trainer_state.json, and copies of `extra_files` (e.g. the
  /// tokenizer.json deepmoe-generate looks for) under their file names; then removes older
  /// checkpoints beyond keep_checkpoints (never the one just written, never newer ones).
  /// A checkpoint of the same step is replaced: renamed aside, the new one renamed in, the old
  /// one removed.
  /// @returns kIoError naming the file or folder that cannot be written or copied.
  Status save(std::string const& dir, nlohmann::json const& run = nlohmann::json::object(),
              std::vector<std::string> const& extra_files = {}) const {
    namespace fs = std::filesystem;
    std::string const name = "checkpoint-" + std::to_string(step_);
    fs::path const final_dir = fs::path(dir) / name, tmp = fs::path(dir) / ("." + name + ".tmp");
    fs::path const old = fs::path(dir) / ("." + name + ".old");
    std::error_code ec;
    fs::remove_all(tmp, ec);
    DEEPMOE_RETURN_IF_ERROR(p_.save(tmp.string()));
    std::vector<io::TensorToWrite> moments;
    for (std::size_t i = 0; i < names_.size(); ++i) {
      auto const n = static_cast<std::int64_t>(refs_[i].value.size());
      moments.push_back(
          {names_[i] + ".exp_avg", io::Dtype::kF32, {n}, std::as_bytes(adam_.first_moment(i))});
      moments.push_back(
          {names_[i] + ".exp_avg_sq", io::Dtype::kF32, {n}, std::as_bytes(adam_.second_moment(i))});
    }
    DEEPMOE_RETURN_IF_ERROR(
        io::write_safetensors((tmp / "optimizer.safetensors").string(), moments));
    for (std::string const& f : extra_files) {
      std::ifstream in(f, std::ios::binary);
      std::string const bytes((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
      if (!in) {
        return Status(StatusCode::kIoError, f + ": cannot read, to copy into the checkpoint");
      }
      std::span<std::byte const> const piece[] = {std::as_bytes(std::span(bytes))};
      DEEPMOE_RETURN_IF_ERROR(
          io::write_file_atomic((tmp / fs::path(f).filename()).string(), piece));
    }
    nlohmann::json const state = {{"step", step_}, {"adamw_steps", adam_.steps()}, {"run", run}};
    std::string const text = state.dump(2) + "\n";
    std::span<std::byte const> const piece[] = {std::as_bytes(std::span(text))};
    DEEPMOE_RETURN_IF_ERROR(io::write_file_atomic((tmp / "trainer_state.json").string(), piece));
    fs::remove_all(old, ec);
    if (fs::exists(final_dir)) {
      fs::rename(final_dir, old, ec);
    }
    fs::rename(tmp, final_dir, ec);
    if (ec) {
      return Status(StatusCode::kIoError,
                    final_dir.string() + ": cannot rename into place (" + ec.message() + ")");
    }
    if (int const fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); fd >= 0) {
      ::fsync(fd);  // the rename survives a crash before anything older is removed
      ::close(fd);
    }
    fs::remove_all(old, ec);
    std::size_t kept = 1;  // the one just written
    auto const all = checkpoints(dir);
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      if (it->first >= step_) {
        continue;
      }
      if (kept < static_cast<std::size_t>(std::max(o_.keep_checkpoints, 1))) {
        ++kept;
      } else {
        fs::remove_all(it->second, ec);
      }
    }
    return {};
  }

  /// Steps taken (the index of the next step).
  std::int64_t steps() const noexcept { return step_; }
  /// The parameters.
  Parameters<C> const& parameters() const noexcept { return p_; }
  /// The options.
  TrainOptions const& options() const noexcept { return o_; }

 private:
  using Compute = typename Bf16Weights<C>::Compute;

  // model_loss in the run's precision
  Status loss(LossStats& stats, std::span<Example const> batch, ModelGrads* grads) {
    LossOptions const lo{
        .balance_alpha = o_.balance_alpha, .mtp_lambda = o_.mtp_lambda, .recompute = o_.recompute};
    if (bf16_) {
      return model_loss<Compute>(stats, batch, bf16_->weights(), *sb_, grads, lo);
    }
    return model_loss<C>(stats, batch, p_.weights(), *s_, grads, lo);
  }

  static double imbalance(std::vector<std::int64_t> const& load) {
    std::int64_t total = 0, most = 0;
    for (auto n : load) {
      total += n;
      most = std::max(most, n);
    }
    return total > 0 ? static_cast<double>(most) * static_cast<double>(load.size()) /
                           static_cast<double>(total)
                     : 1.0;
  }

  // (step, folder) of every complete checkpoint under dir, oldest first
  static std::vector<std::pair<std::int64_t, std::string>> checkpoints(std::string const& dir) {
    namespace fs = std::filesystem;
    std::vector<std::pair<std::int64_t, std::string>> out;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      std::string const n = it->path().filename().string();
      if (n.starts_with("checkpoint-") && n.size() > 11 &&
          n.find_first_not_of("0123456789", 11) == std::string::npos &&
          fs::exists(it->path() / "trainer_state.json")) {
        out.emplace_back(std::stoll(n.substr(11)), it->path().string());
      }
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  TrainOptions o_;
  Parameters<C> p_;
  ModelGrads g_;
  std::unique_ptr<LossScratch<C>> s_;         // fp32 mode
  std::unique_ptr<Bf16Weights<C>> bf16_;      // bf16 mode: the compute copy
  std::unique_ptr<LossScratch<Compute>> sb_;  // bf16 mode
  AdamW adam_{{}, {}};
  std::vector<ParamRef> refs_;                            // trained tensors, with their gradients
  std::vector<std::span<float>> grads_;                   // the same gradients, for clipping
  std::vector<std::string> names_;                        // their checkpoint names
  std::vector<std::pair<int, std::span<float>>> biases_;  // (layer, e_score_correction_bias)
  std::vector<std::vector<std::int32_t>> windows_;
  std::int64_t step_ = 0;
};

}  // namespace train
DEEPMOE_NAMESPACE_END
