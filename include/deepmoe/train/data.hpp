// SPDX-License-Identifier: Apache-2.0
/// @file data.hpp
/// @brief Training data: text files from weighted sources, tokenized into one stream per source
/// (documents joined by EOS), split into training and validation by document, and drawn as
/// packed sequences whose content is a pure function of (seed, step) — so a resumed run sees
/// exactly the batches the uninterrupted one would have.
///
///   source:   paths (files, or folders walked recursively) filtered by include patterns
///             (fnmatch globs on the file name, e.g. "*.py"); files in sorted path order
///   document: one file; validation iff u = hash(seed, path) / 2^64 < validation_fraction (or,
///             when that holds for none of a source's ≥ 2 files, the one of least u)
///   stream:   tokens(doc_1) EOS tokens(doc_2) EOS …  (per source and split)
///   batch(step, b): source s drawn with probability weight_s / Σ weight (splitmix64 seeded by
///             seed, step and b), then a window of L + 1 tokens at a uniform offset: inputs are
///             its first L tokens, targets the last L. Windows cross document boundaries —
///             packing without cross-document masking, as DeepSeek-V3 trains (arXiv:2412.19437
///             §4.2).
#pragma once

#include <deepmoe/core/status.hpp>
#include <deepmoe/tokenizer/tokenizer.hpp>
#include <deepmoe/util/random_moe.hpp>

#include <fnmatch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <sstream>
#include <string>
#include <vector>

DEEPMOE_NAMESPACE_BEGIN
namespace train {

/// One weighted source of text.
struct Source {
  std::string name;                  ///< e.g. "code", "prose" (reports name it)
  std::vector<std::string> paths;    ///< files or folders (walked recursively)
  std::vector<std::string> include;  ///< fnmatch patterns on file names; empty: every file
  double weight = 1.0;               ///< relative share of the training batches
};

/// The files of `s`, sorted.
/// @returns kIoError naming a path that does not exist; invalid_argument when none match.
inline Status collect_files(Source const& s, std::vector<std::string>& files) {
  namespace fs = std::filesystem;
  files.clear();
  auto wanted = [&](fs::path const& p) {
    if (s.include.empty()) {
      return true;
    }
    std::string const name = p.filename().string();
    return std::any_of(s.include.begin(), s.include.end(), [&](std::string const& pat) {
      return fnmatch(pat.c_str(), name.c_str(), 0) == 0;
    });
  };
  for (std::string const& path : s.paths) {
    std::error_code ec;
    if (fs::is_regular_file(path, ec)) {
      files.push_back(path);  // named explicitly: taken whatever the patterns
    } else if (fs::is_directory(path, ec)) {
      for (auto it = fs::recursive_directory_iterator(
               path, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_regular_file(ec) && wanted(it->path())) {
          files.push_back(it->path().string());
        }
      }
    } else {
      return Status(StatusCode::kIoError,
                    "source '" + s.name + "': " + path + " is neither a file nor a folder");
    }
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  if (files.empty()) {
    return invalid_argument("source '" + s.name + "': no file matches — HINT: check the paths " +
                            "and the include patterns");
  }
  return {};
}

/// The tokenized sources, split into training and validation streams.
class TextDataset {
 public:
  /// Reads, tokenizes and splits every source.
  /// @param eos                  the id joined after each document
  /// @param validation_fraction  share of documents held out, in [0, 1)
  /// @param seed                 the split's and the batches' seed
  /// @returns collect_files' errors; kIoError for an unreadable file; invalid_argument for no
  ///          source, a weight ≤ 0, or a source whose training stream is shorter than 2 tokens.
  static Status build(std::vector<Source> const& sources, tokenizer::Tokenizer const& tok,
                      std::int32_t eos, double validation_fraction, std::uint64_t seed,
                      TextDataset& out) {
    if (sources.empty()) {
      return invalid_argument("TextDataset: no source");
    }
    TextDataset d;
    d.seed_ = seed;
    for (Source const& s : sources) {
      if (!(s.weight > 0)) {
        return invalid_argument("source '" + s.name + "': weight must be > 0");
      }
      std::vector<std::string> files;
      DEEPMOE_RETURN_IF_ERROR(collect_files(s, files));
      Stream train, val;
      std::vector<std::int32_t> ids;
      // held out: u(path) < fraction; at least the lowest-u document when the fraction > 0 and
      // the source has two or more (so every source has a validation loss)
      std::string least;
      double least_u = 2.0;
      bool any = false;
      for (std::string const& f : files) {
        double const u = validation_u(f, seed);
        any = any || u < validation_fraction;
        if (u < least_u) {
          least_u = u;
          least = f;
        }
      }
      bool const force = !any && validation_fraction > 0 && files.size() >= 2;
      for (std::string const& f : files) {
        std::ifstream in(f, std::ios::binary);
        if (!in) {
          return Status(StatusCode::kIoError, "source '" + s.name + "': cannot read " + f);
        }
        std::string const text((std::istreambuf_iterator<char>(in)),
                               std::istreambuf_iterator<char>());
        DEEPMOE_RETURN_IF_ERROR(tok.encode(text, ids, false));
        bool const held = validation_u(f, seed) < validation_fraction || (force && f == least);
        Stream& to = held ? val : train;
        to.tokens.insert(to.tokens.end(), ids.begin(), ids.end());
        to.tokens.push_back(eos);
        ++to.documents;
      }
      if (train.tokens.size() < 2) {
        return invalid_argument("source '" + s.name + "': " + std::to_string(train.tokens.size()) +
                                " training tokens — HINT: more text, or a smaller validation "
                                "fraction");
      }
      d.names_.push_back(s.name);
      d.weights_.push_back(s.weight);
      d.train_.push_back(std::move(train));
      d.val_.push_back(std::move(val));
    }
    out = std::move(d);
    return {};
  }

  /// Number of sources.
  std::size_t sources() const noexcept { return names_.size(); }
  /// Source i's name.
  std::string const& name(std::size_t i) const { return names_[i]; }
  /// Source i's tokens, training or validation (documents joined by EOS).
  std::vector<std::int32_t> const& tokens(std::size_t i, bool validation = false) const {
    return (validation ? val_ : train_)[i].tokens;
  }
  /// Source i's document count, training or validation.
  std::int64_t documents(std::size_t i, bool validation = false) const {
    return (validation ? val_ : train_)[i].documents;
  }

  /// The unigram baseline of source i's validation tokens, in nats per token: their mean
  /// −log p(token) under the training tokens' frequencies (each source's share of the training
  /// batches as its weight says), add-one smoothed over `vocab_size` ids. A model that learned
  /// nothing beyond token frequencies reaches this validation loss.
  double unigram_baseline(std::size_t i, std::int64_t vocab_size) const {
    std::vector<double> p(static_cast<std::size_t>(vocab_size), 0.0);
    double total_w = 0;
    for (double w : weights_)
      total_w += w;
    for (std::size_t s = 0; s < train_.size(); ++s) {
      auto const n = static_cast<double>(train_[s].tokens.size());
      for (std::int32_t t : train_[s].tokens)
        if (t >= 0 && t < vocab_size) {
          p[static_cast<std::size_t>(t)] += weights_[s] / total_w / n;
        }
    }
    // add-one smoothing at the scale of the training stream lengths
    double count = 0;
    for (auto const& s : train_)
      count += static_cast<double>(s.tokens.size());
    double sum = 0;
    for (double& q : p)
      sum += (q = q * count + 1.0);
    double nll = 0;
    for (std::int32_t t : val_[i].tokens)
      nll -= std::log((t >= 0 && t < vocab_size ? p[static_cast<std::size_t>(t)] : 1.0) / sum);
    return val_[i].tokens.empty() ? 0.0 : nll / static_cast<double>(val_[i].tokens.size());
  }

  /// Sequence b of training step `step`: L + 1 tokens (file comment) and the source drawn.
  /// @param weights  the sources' weights for this draw (a curriculum stage's data mix), or
  ///                 empty for the weights the sources were built with
  /// @returns invalid_argument when a source's stream is shorter than L + 1 tokens, or for
  ///          `weights` of another length than the sources or without a positive weight.
  Status window(std::int64_t step, std::int64_t b, std::int64_t L, std::vector<std::int32_t>& out,
                std::size_t& source, std::span<double const> weights = {}) const {
    std::span<double const> const w = weights.empty() ? std::span<double const>(weights_) : weights;
    double total = 0;
    for (double x : w)
      total += x > 0 ? x : 0;
    if (w.size() != weights_.size() || !(total > 0)) {
      return invalid_argument("data mix of " + std::to_string(w.size()) + " weights for " +
                              std::to_string(weights_.size()) +
                              " sources (need one each, one > 0)");
    }
    util::Rng rng(mix(seed_, static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(b)));
    double u = static_cast<double>(rng.next() >> 11) * 0x1p-53 * total;
    source = w.size() - 1;
    for (std::size_t i = 0; i < w.size(); ++i) {
      double const wi = w[i] > 0 ? w[i] : 0;
      if (u < wi) {
        source = i;
        break;
      }
      u -= wi;
    }
    while (!(w[source] > 0))  // rounding at the top end: the last source that has weight
      --source;
    return take(train_[source].tokens, rng.next(), L, out, names_[source]);
  }

  /// Validation window j of source i: the j-th consecutive L + 1 tokens (j < validation_windows).
  /// @returns invalid_argument naming the source when it has no window j.
  Status validation_window(std::size_t i, std::int64_t j, std::int64_t L,
                           std::vector<std::int32_t>& out) const {
    auto const& t = val_[i].tokens;
    if ((j + 1) * L + 1 > static_cast<std::int64_t>(t.size())) {
      return invalid_argument("source '" + names_[i] + "': no validation window " +
                              std::to_string(j) + " of " + std::to_string(L + 1) + " tokens");
    }
    out.assign(t.begin() + j * L, t.begin() + j * L + L + 1);
    return {};
  }
  /// How many validation windows of L + 1 tokens source i has.
  std::int64_t validation_windows(std::size_t i, std::int64_t L) const {
    auto const n = static_cast<std::int64_t>(val_[i].tokens.size());
    return n > L ? (n - 1) / L : 0;
  }

 private:
  struct Stream {
    std::vector<std::int32_t> tokens;
    std::int64_t documents = 0;
  };

  static std::uint64_t mix(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
    util::Rng r(a ^ (b * 0x9E3779B97F4A7C15ull) ^ (c * 0xC2B2AE3D27D4EB4Full));
    return r.next();
  }
  static double validation_u(std::string const& path, std::uint64_t seed) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the path, then mixed with the seed
    for (unsigned char c : path) {
      h = (h ^ c) * 1099511628211ull;
    }
    return static_cast<double>(mix(h, seed, 0) >> 11) * 0x1p-53;
  }
  static Status take(std::vector<std::int32_t> const& t, std::uint64_t r, std::int64_t L,
                     std::vector<std::int32_t>& out, std::string const& name) {
    auto const n = static_cast<std::int64_t>(t.size());
    if (n < L + 1) {
      return invalid_argument("source '" + name + "': " + std::to_string(n) +
                              " tokens cannot fill a window of " + std::to_string(L + 1) +
                              " — HINT: a shorter sequence length, or more text");
    }
    auto const start = static_cast<std::int64_t>(r % static_cast<std::uint64_t>(n - L));
    out.assign(t.begin() + start, t.begin() + start + L + 1);
    return {};
  }

  std::uint64_t seed_ = 0;
  std::vector<std::string> names_;
  std::vector<double> weights_;
  std::vector<Stream> train_, val_;
};

}  // namespace train
DEEPMOE_NAMESPACE_END
