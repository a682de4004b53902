// The Mpi collective (OpenMPI; CPU buffers). Every collective is the non-blocking MPI call
// polled with MPI_Test and a deadline: MPI itself has no timeouts, and a wait past
// NNPIPE_DIST_TIMEOUT must end in an error, not a hang. A dead rank is mpirun's to notice: it
// kills the job when a process exits without MPI_Finalize.
// The C API only: OpenMPI's deprecated C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstring>

#include "core/error.h"
#include "core/log.h"
#include "dist/impl.h"

namespace nnpipe::dist {

bool mpi_built() {
  return true;
}

namespace {

class Mpi final : public Collective {
 public:
  explicit Mpi(const LaunchEnv& env) : timeout_s_(env.timeout_s), local_rank_(env.local_rank) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      // SERIALIZED: the trainer's comm thread and its main thread take turns, never at once.
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        fail(ErrorCode::kIo, "MPI_Init_thread failed");
      if (provided < MPI_THREAD_SERIALIZED)
        fail(ErrorCode::kUnsupported,
             "this MPI library gives thread level {}, nnpipe needs MPI_THREAD_SERIALIZED",
             provided);
      owns_ = true;
    }
    // Errors come back as codes (we turn them into Error) instead of aborting inside MPI.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    if (rank_ != env.rank || world_ != env.world)
      fail(ErrorCode::kInvalidArgument,
           "MPI says rank {} of {}, the environment (OMPI_COMM_WORLD_*) said {} of {}", rank_,
           world_, env.rank, env.world);
  }
  ~Mpi() override {
    if (owns_ && !aborted_) MPI_Finalize();
  }

  const char* name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  int local_rank() const override { return local_rank_; }

  void all_reduce(std::span<float> buf, ReduceOp op) override {
    reduce(buf.data(), buf.size(), MPI_FLOAT, op);
    if (op == ReduceOp::kAvg)
      for (float& x : buf) x /= static_cast<float>(world_);
  }
  void all_reduce(std::span<double> buf, ReduceOp op) override {
    reduce(buf.data(), buf.size(), MPI_DOUBLE, op);
    if (op == ReduceOp::kAvg)
      for (double& x : buf) x /= world_;
  }
  void reduce_scatter(std::span<float> buf, ReduceOp op) override {
    const size_t chunk = chunk_of(buf.size(), "reduce_scatter");
    float* mine = buf.data() + chunk * static_cast<size_t>(rank_);
    MPI_Request req;
    // In place, MPI puts this rank's result at the start of the buffer: moved to its chunk after.
    check(MPI_Ireduce_scatter_block(MPI_IN_PLACE, buf.data(), count(chunk), MPI_FLOAT, MPI_SUM,
                                    MPI_COMM_WORLD, &req),
          "reduce_scatter");
    wait(req, "reduce_scatter");
    if (rank_ != 0) std::memmove(mine, buf.data(), chunk * sizeof(float));
    if (op == ReduceOp::kAvg)
      for (size_t i = 0; i < chunk; ++i) mine[i] /= static_cast<float>(world_);
  }
  void all_gather(std::span<float> buf) override {
    const size_t chunk = chunk_of(buf.size(), "all_gather");
    MPI_Request req;
    check(MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf.data(), count(chunk), MPI_FLOAT,
                         MPI_COMM_WORLD, &req),
          "all_gather");
    wait(req, "all_gather");
  }
  void broadcast(std::span<uint8_t> buf, int root) override {
    for (size_t at = 0; at < buf.size(); at += kMaxCount) {  // counts are ints
      MPI_Request req;
      check(MPI_Ibcast(buf.data() + at, count(std::min(kMaxCount, buf.size() - at)), MPI_BYTE, root,
                       MPI_COMM_WORLD, &req),
            "broadcast");
      wait(req, "broadcast");
    }
  }
  void barrier() override {
    MPI_Request req;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &req), "barrier");
    wait(req, "barrier");
  }
  void cancel() override { cancelled_ = true; }
  void abort(int code) override {
    aborted_ = true;
    MPI_Abort(MPI_COMM_WORLD, code);
  }
  using Collective::all_reduce;
  using Collective::broadcast;

 private:
  static constexpr size_t kMaxCount = size_t{1} << 30;

  void reduce(void* data, size_t n, MPI_Datatype type, ReduceOp) {
    const size_t elem = type == MPI_DOUBLE ? sizeof(double) : sizeof(float);
    for (size_t at = 0; at < n; at += kMaxCount) {
      MPI_Request req;
      check(MPI_Iallreduce(MPI_IN_PLACE, static_cast<uint8_t*>(data) + at * elem,
                           count(std::min(kMaxCount, n - at)), type, MPI_SUM, MPI_COMM_WORLD, &req),
            "all_reduce");
      wait(req, "all_reduce");
    }
  }
  size_t chunk_of(size_t n, const char* op) const {
    if (n % static_cast<size_t>(world_) != 0)
      fail(ErrorCode::kInvalidArgument, "{}: {} elements do not split into {} equal chunks",
           describe(op), n, world_);
    return n / static_cast<size_t>(world_);
  }
  int count(size_t n) const {
    if (n > kMaxCount) fail(ErrorCode::kInvalidArgument, "mpi: {} elements in one call", n);
    return static_cast<int>(n);
  }
  void check(int rc, const char* op) const {
    if (rc == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    fail(ErrorCode::kIo, "rank {}: MPI {} failed: {}", rank_, describe(op), std::string(msg, len));
  }
  // Polls with growing sleeps (up to 0.5 ms): busy waiting would take the core from the compute
  // threads of this rank or of another one on the same machine.
  void wait(MPI_Request& req, const char* op) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
    long ns = 1000;
    for (;;) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), op);
      if (done) return;
      if (cancelled_)
        fail(ErrorCode::kIo, "rank {}: MPI {} cancelled after an error", rank_, describe(op));
      if (std::chrono::steady_clock::now() > deadline)
        fail(ErrorCode::kIo,
             "rank {}: MPI {} waited more than {} s for the other ranks (NNPIPE_DIST_TIMEOUT): "
             "a rank is stuck or much slower",
             rank_, describe(op), timeout_s_);
      timespec ts{0, ns};
      nanosleep(&ts, nullptr);
      ns = std::min(ns * 2, 500000L);
    }
  }

  double timeout_s_;
  int rank_ = 0, world_ = 1, local_rank_ = 0;
  bool owns_ = false, aborted_ = false;
  std::atomic<bool> cancelled_{false};
};

}  // namespace

std::unique_ptr<Collective> make_mpi_collective(const LaunchEnv& env) {
  return std::make_unique<Mpi>(env);
}

}  // namespace nnpipe::dist
