// Collectives for data-parallel training: one process per rank, launched by mpirun, torchrun or
// Slurm's srun (docs/DISTRIBUTED.md). Implementations: SingleProcess (world 1, always built),
// Mpi (OpenMPI, when CMake finds MPI) and Tcp (sockets, rendezvous at MASTER_ADDR; torchrun and
// Slurm without MPI). All work on host float/double buffers and CPU tensors, in place.
//
// Rules every implementation keeps:
// - Every rank calls the same collectives in the same order with the same sizes.
// - One thread at a time calls into a Collective (the trainer's comm thread or its main thread).
// - Every rank ends with the same bits: a reduction sums each element in one fixed order and
//   distributes that result (the Tcp ring; MPI's algorithms for commutative ops).
// - Nothing blocks forever: a dead peer or a wait longer than the timeout throws Error naming the
//   rank, the collective and what it was for (set_context), e.g. "rank 1 disconnected during
//   all_reduce (step 3)".
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "tensor/tensor.h"

namespace nnpipe::dist {

enum class ReduceOp { kSum, kAvg };

class Collective {
 public:
  virtual ~Collective() = default;
  virtual const char* name() const = 0;  // "single" | "mpi" | "tcp"
  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual int local_rank() const = 0;  // rank within its node (device choice, logs)

  // In place: every element becomes the sum (or mean) of that element over all ranks.
  virtual void all_reduce(std::span<float> buf, ReduceOp op) = 0;
  virtual void all_reduce(std::span<double> buf, ReduceOp op) = 0;
  // buf holds world() equal chunks; afterwards chunk rank() holds the reduction of chunk rank()
  // over all ranks (the other chunks are scratch). buf.size() % world() must be 0.
  virtual void reduce_scatter(std::span<float> buf, ReduceOp op) = 0;
  // buf holds world() equal chunks; chunk r of rank r is its contribution. Afterwards every rank
  // holds every rank's chunk.
  virtual void all_gather(std::span<float> buf) = 0;
  // root's bytes to every rank.
  virtual void broadcast(std::span<uint8_t> buf, int root) = 0;
  virtual void barrier() = 0;
  // Ends the whole job after an error on this rank (MPI_Abort; Tcp shuts its sockets down, which
  // the peers see at once). Only the application calls it, on its way out.
  virtual void abort(int code) = 0;
  // Makes a collective running on another thread fail soon ("cancelled"), so that an error on the
  // main thread does not wait for the comm thread's timeout. Only for error paths: afterwards the
  // collective is unusable.
  virtual void cancel() = 0;

  // CPU f32 tensors, in place.
  void all_reduce(Tensor& t, ReduceOp op);
  void broadcast(Tensor& t, int root);
  // A string from root (its length first).
  std::string broadcast(const std::string& s, int root);

  // What the next collectives are for, named in their errors ("step 3").
  void set_context(std::string what) { context_ = std::move(what); }
  const std::string& context() const { return context_; }

 protected:
  // "all_reduce (step 3)".
  std::string describe(const char* op) const;
  std::string context_;
};

// World size 1: every collective leaves the buffer as it is (kAvg of one rank is the value).
class SingleProcess final : public Collective {
 public:
  const char* name() const override { return "single"; }
  int rank() const override { return 0; }
  int world() const override { return 1; }
  int local_rank() const override { return 0; }
  void all_reduce(std::span<float>, ReduceOp) override {}
  void all_reduce(std::span<double>, ReduceOp) override {}
  void reduce_scatter(std::span<float>, ReduceOp) override {}
  void all_gather(std::span<float>) override {}
  void broadcast(std::span<uint8_t>, int) override {}
  void barrier() override {}
  void abort(int) override {}
  void cancel() override {}
  using Collective::all_reduce;
  using Collective::broadcast;
};

// --- the launch environment ---
enum class Kind { kNone, kMpi, kTcp };
const char* kind_name(Kind k);
// "auto" (out = nullopt) | "none" | "mpi" | "tcp"; false for anything else.
bool parse_kind(const std::string& s, std::optional<Kind>& out);

struct LaunchEnv {
  Kind kind = Kind::kNone;
  std::string launcher;  // "openmpi" | "torchrun" | "slurm" | "" (none)
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr;  // Tcp only
  int port = 0;             // Tcp: NNPIPE_DIST_PORT, else MASTER_PORT + 1
  double timeout_s = 300;   // NNPIPE_DIST_TIMEOUT: longest wait for a peer
};

// Reads the launchers' variables (OMPI_COMM_WORLD_*; RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/
// MASTER_PORT of torchrun; SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID with MASTER_ADDR/MASTER_PORT),
// first match in that order. `want` forces a kind (nullopt: auto). Throws kInvalidArgument naming
// the variable that is missing or malformed.
LaunchEnv detect_launch(const std::map<std::string, std::string>& env,
                        std::optional<Kind> want = std::nullopt);
// The process environment as a map (the variables detect_launch reads).
std::map<std::string, std::string> process_env();

// Whether this build has the Mpi implementation.
bool mpi_built();
// The collective for `env`: SingleProcess for world 1, else Mpi or Tcp (connects to the peers;
// returns when all ranks are connected). Throws kUnsupported for Mpi in a build without MPI.
std::unique_ptr<Collective> make_collective(const LaunchEnv& env);

}  // namespace nnpipe::dist
