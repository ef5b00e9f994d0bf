// SPDX-License-Identifier: Apache-2.0
/// @file communicator.cuh
/// @brief Communicator: one rank's NCCL communicator — all-reduce, and all-to-all with
/// per-rank counts (the exchange expert parallelism dispatches and combines tokens with).
///
/// Host API (no kernels): usable from any translation unit that sees nccl.h and the CUDA
/// runtime. NCCL errors become Status kNcclError with NCCL's message.
/// @ref NCCL user guide, "Point-to-point communication" (all-to-all as grouped send/recv);
/// DeepSeek-V3 §3.2 (expert-parallel all-to-all).
#pragma once

#include <deepmoe/backend/cuda/check.cuh>

#include <nccl.h>

#include <cstddef>
#include <span>
#include <string>
#include <utility>

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// ok for ncclSuccess, else kNcclError: "<what>: <NCCL's message> (<file>:<line>)".
inline Status nccl_check(ncclResult_t r, char const* what, char const* file, int line) {
  return r == ncclSuccess
             ? Status{}
             : located_error(StatusCode::kNcclError, what, ncclGetErrorString(r), file, line);
}

}  // namespace gpu
DEEPMOE_NAMESPACE_END

/// Returns the Status of a failed NCCL call (gpu::nccl_check) from the enclosing function.
#define DEEPMOE_NCCL_CHECK(expr)                                       \
  do {                                                                 \
    ::deepmoe::Status deepmoe_status_ =                                \
        ::deepmoe::gpu::nccl_check((expr), #expr, __FILE__, __LINE__); \
    if (!deepmoe_status_.ok()) {                                       \
      return deepmoe_status_;                                          \
    }                                                                  \
  } while (0)

DEEPMOE_NAMESPACE_BEGIN
namespace gpu {

/// One rank of an NCCL communicator on the current CUDA device. Move-only; destroys the
/// communicator with the object.
class Communicator {
 public:
  Communicator() = default;
  Communicator(Communicator&& o) noexcept
      : comm_(std::exchange(o.comm_, nullptr)), rank_(o.rank_), size_(o.size_) {}
  Communicator& operator=(Communicator&& o) noexcept {
    std::swap(comm_, o.comm_);
    std::swap(rank_, o.rank_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~Communicator() {
    if (comm_ != nullptr) {
      static_cast<void>(ncclCommDestroy(comm_));
    }
  }

  /// A fresh unique id: one rank makes it and hands it to the others (MPI_Bcast, a file…).
  /// @returns kNcclError when NCCL cannot make one (no network interface, …).
  static Status unique_id(ncclUniqueId& id) {
    DEEPMOE_NCCL_CHECK(ncclGetUniqueId(&id));
    return {};
  }

  /// Joins the communicator of `size` ranks named by `id` as rank `rank`, on the current
  /// device (cudaSetDevice first). Blocks until every rank has joined.
  /// @returns invalid_argument for rank ∉ [0, size); kNcclError when NCCL fails.
  static Status init(ncclUniqueId const& id, int size, int rank, Communicator& out) {
    if (size < 1 || rank < 0 || rank >= size) {
      return invalid_argument("Communicator::init: rank " + std::to_string(rank) + " of size " +
                              std::to_string(size));
    }
    Communicator c;
    DEEPMOE_NCCL_CHECK(ncclCommInitRank(&c.comm_, size, id, rank));
    c.rank_ = rank;
    c.size_ = size;
    out = std::move(c);
    return {};
  }

  /// recv = Σ over ranks of send, elementwise (fp32). In place when d_recv == d_send.
  /// Asynchronous on `stream`.
  /// @param d_send  [count] fp32, device
  /// @param d_recv  [count] fp32, device, out
  /// @returns kNcclError when NCCL fails.
  Status all_reduce_sum(float const* d_send, float* d_recv, std::size_t count,
                        cudaStream_t stream) const {
    DEEPMOE_NCCL_CHECK(ncclAllReduce(d_send, d_recv, count, ncclFloat32, ncclSum, comm_, stream));
    return {};
  }

  /// All-to-all with counts: this rank sends send_counts[p] elements to rank p, taken from
  /// d_send at offset Σ_{q<p} send_counts[q], and receives recv_counts[p] elements from rank p
  /// into d_recv at offset Σ_{q<p} recv_counts[q] (counts in elements of T; a rank's
  /// send_counts[p] must equal rank p's recv_counts[this rank]). Grouped send/recv pairs,
  /// asynchronous on `stream`.
  /// @tparam T  a trivially copyable element (moved as bytes)
  /// @returns invalid_argument when a count list does not have size() entries; kNcclError when
  ///          NCCL fails.
  /// @pre d_send and d_recv do not overlap.
  /// NOTES: if NCCL refuses one send or receive, the pairs already queued still start when the
  /// group ends; the peers may then wait for the rest, so treat the communicator as broken.
  template <class T>
  Status all_to_all(T const* d_send, std::span<std::size_t const> send_counts, T* d_recv,
                    std::span<std::size_t const> recv_counts, cudaStream_t stream) const {
    if (send_counts.size() != static_cast<std::size_t>(size_) ||
        recv_counts.size() != static_cast<std::size_t>(size_)) {
      return invalid_argument(
          "Communicator::all_to_all: one send and one receive count per rank (" +
          std::to_string(size_) + ")");
    }
    std::size_t sent = 0, received = 0;
    DEEPMOE_NCCL_CHECK(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      auto const up = static_cast<std::size_t>(p);
      ncclResult_t r = ncclSend(reinterpret_cast<char const*>(d_send + sent),
                                send_counts[up] * sizeof(T), ncclChar, p, comm_, stream);
      if (r == ncclSuccess) {
        r = ncclRecv(reinterpret_cast<char*>(d_recv + received), recv_counts[up] * sizeof(T),
                     ncclChar, p, comm_, stream);
      }
      if (r != ncclSuccess) {
        static_cast<void>(ncclGroupEnd());
        return nccl_check(r, "Communicator::all_to_all", __FILE__, __LINE__);
      }
      sent += send_counts[up];
      received += recv_counts[up];
    }
    DEEPMOE_NCCL_CHECK(ncclGroupEnd());
    return {};
  }

  int rank() const noexcept { return rank_; }        ///< this rank
  int size() const noexcept { return size_; }        ///< ranks in all
  ncclComm_t get() const noexcept { return comm_; }  ///< the NCCL handle

 private:
  ncclComm_t comm_ = nullptr;
  int rank_ = 0;
  int size_ = 0;
};

}  // namespace gpu
DEEPMOE_NAMESPACE_END
