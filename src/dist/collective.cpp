#include "dist/collective.h"

#include <unistd.h>
#include <charconv>
#include <cstring>

#include "core/error.h"
#include "dist/impl.h"

extern char** environ;

namespace nnpipe::dist {

std::string Collective::describe(const char* op) const {
  return context_.empty() ? std::string(op) : fmt::format("{} ({})", op, context_);
}

void Collective::all_reduce(Tensor& t, ReduceOp op) {
  check_tensor(t, DType::kF32, t.shape(), "all_reduce");
  if (t.device() != Device::kCPU)
    fail(ErrorCode::kUnsupported, "all_reduce: {}: only CPU tensors", t.describe());
  all_reduce(std::span<float>(reinterpret_cast<float*>(t.raw()), static_cast<size_t>(t.numel())),
             op);
}

void Collective::broadcast(Tensor& t, int root) {
  if (t.device() != Device::kCPU)
    fail(ErrorCode::kUnsupported, "broadcast: {}: only CPU tensors", t.describe());
  broadcast(std::span<uint8_t>(t.raw(), t.nbytes()), root);
}

std::string Collective::broadcast(const std::string& s, int root) {
  uint64_t n = s.size();
  broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(&n), sizeof n), root);
  std::string out = rank() == root ? s : std::string(n, '\0');
  broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size()), root);
  return out;
}

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "none";
    case Kind::kMpi:
      return "mpi";
    case Kind::kTcp:
      return "tcp";
  }
  return "?";
}

bool parse_kind(const std::string& s, std::optional<Kind>& out) {
  out.reset();
  if (s == "auto") return true;
  for (Kind k : {Kind::kNone, Kind::kMpi, Kind::kTcp})
    if (s == kind_name(k)) {
      out = k;
      return true;
    }
  return false;
}

namespace {

using Env = std::map<std::string, std::string>;

const std::string* find(const Env& env, const std::string& k) {
  auto it = env.find(k);
  return it == env.end() || it->second.empty() ? nullptr : &it->second;
}

int int_var(const Env& env, const std::string& k, int lo, int hi, const char* launcher) {
  const std::string* v = find(env, k);
  if (!v)
    fail(ErrorCode::kInvalidArgument, "{} launch: environment variable {} is not set", launcher, k);
  int x = 0;
  auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), x);
  if (ec != std::errc() || end != v->data() + v->size() || x < lo || x > hi)
    fail(ErrorCode::kInvalidArgument,
         "{} launch: environment variable {}=\"{}\" is not an integer in [{}, {}]", launcher, k, *v,
         lo, hi);
  return x;
}

// MASTER_ADDR, the port (NNPIPE_DIST_PORT, else MASTER_PORT + 1: torchrun's agent already serves
// its TCPStore on MASTER_PORT) for a Tcp world of more than one rank.
void tcp_address(const Env& env, LaunchEnv& le) {
  const char* who = le.launcher.c_str();
  const std::string* addr = find(env, "MASTER_ADDR");
  if (!addr)
    fail(ErrorCode::kInvalidArgument,
         "{} launch of {} ranks: MASTER_ADDR is not set (the host of rank 0; under Slurm e.g. "
         "`export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)`)",
         who, le.world);
  le.master_addr = *addr;
  if (find(env, "NNPIPE_DIST_PORT")) {
    le.port = int_var(env, "NNPIPE_DIST_PORT", 1, 65535, who);
  } else {
    if (!find(env, "MASTER_PORT"))
      fail(ErrorCode::kInvalidArgument,
           "{} launch of {} ranks: MASTER_PORT (or NNPIPE_DIST_PORT) is not set", who, le.world);
    le.port = int_var(env, "MASTER_PORT", 1, 65534, who) + 1;
  }
}

}  // namespace

LaunchEnv detect_launch(const Env& env, std::optional<Kind> want) {
  LaunchEnv le;
  if (find(env, "NNPIPE_DIST_TIMEOUT")) {
    const std::string& v = *find(env, "NNPIPE_DIST_TIMEOUT");
    char* end = nullptr;
    const double t = std::strtod(v.c_str(), &end);
    if (end != v.c_str() + v.size() || !(t > 0) || t > 1e6)
      fail(ErrorCode::kInvalidArgument,
           "NNPIPE_DIST_TIMEOUT=\"{}\" is not a number of seconds in (0, 1e6]", v);
    le.timeout_s = t;
  }
  if (want == Kind::kNone) return le;
  constexpr int kMax = 1 << 20;
  if (find(env, "OMPI_COMM_WORLD_SIZE")) {
    le.launcher = "openmpi";
    le.world = int_var(env, "OMPI_COMM_WORLD_SIZE", 1, kMax, "mpirun");
    le.rank = int_var(env, "OMPI_COMM_WORLD_RANK", 0, le.world - 1, "mpirun");
    le.local_rank = find(env, "OMPI_COMM_WORLD_LOCAL_RANK")
                        ? int_var(env, "OMPI_COMM_WORLD_LOCAL_RANK", 0, kMax, "mpirun")
                        : 0;
    // mpirun with --dist tcp: OpenMPI's ranks, our sockets (a build without MPI).
    if (le.world > 1) {
      le.kind = want == Kind::kTcp ? Kind::kTcp : Kind::kMpi;
      if (le.kind == Kind::kTcp) tcp_address(env, le);
    }
  } else if (find(env, "RANK") && find(env, "WORLD_SIZE")) {
    le.launcher = "torchrun";
    le.world = int_var(env, "WORLD_SIZE", 1, kMax, "torchrun");
    le.rank = int_var(env, "RANK", 0, le.world - 1, "torchrun");
    le.local_rank = find(env, "LOCAL_RANK") ? int_var(env, "LOCAL_RANK", 0, kMax, "torchrun") : 0;
  } else if (find(env, "SLURM_PROCID") && find(env, "SLURM_NTASKS")) {
    le.launcher = "slurm";
    le.world = int_var(env, "SLURM_NTASKS", 1, kMax, "Slurm");
    le.rank = int_var(env, "SLURM_PROCID", 0, le.world - 1, "Slurm");
    le.local_rank =
        find(env, "SLURM_LOCALID") ? int_var(env, "SLURM_LOCALID", 0, kMax, "Slurm") : 0;
  } else if (want) {
    fail(ErrorCode::kInvalidArgument,
         "--dist {}: no launcher environment found (OMPI_COMM_WORLD_SIZE, RANK + WORLD_SIZE, or "
         "SLURM_PROCID + SLURM_NTASKS): start nnpipe with mpirun, torchrun or srun",
         kind_name(*want));
  }
  if (le.launcher != "openmpi" && le.world > 1) {
    if (want == Kind::kMpi)
      fail(ErrorCode::kInvalidArgument,
           "--dist mpi: launched by {} (no OMPI_COMM_WORLD_* variables): start with mpirun, or "
           "use --dist tcp",
           le.launcher);
    le.kind = Kind::kTcp;
    tcp_address(env, le);
  }
  return le;
}

std::map<std::string, std::string> process_env() {
  Env env;
  for (char** e = environ; e && *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq) env.emplace(std::string(*e, static_cast<size_t>(eq - *e)), std::string(eq + 1));
  }
  return env;
}

std::unique_ptr<Collective> make_collective(const LaunchEnv& env) {
  switch (env.world > 1 ? env.kind : Kind::kNone) {
    case Kind::kMpi:
      return make_mpi_collective(env);
    case Kind::kTcp:
      return make_tcp_collective(env);
    case Kind::kNone:
      break;
  }
  return std::make_unique<SingleProcess>();
}

}  // namespace nnpipe::dist
