// The collectives (src/dist/): launch-environment parsing, and the Tcp ring with one thread per
// rank in this process (every op against the sums computed here, a closed peer, ZeRO-1's shard
// arithmetic through a real all_gather).
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "backend/backend.h"
#include "core/error.h"
#include "dist/collective.h"
#include "train/adamw.h"
#include "train/zero.h"

using namespace nnpipe;
using namespace nnpipe::dist;

namespace {

using Env = std::map<std::string, std::string>;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A port that was free a moment ago (bind to 0, read it, close).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Runs fn(rank's collective) on `world` threads joined by a Tcp ring; errors are returned per rank.
std::vector<std::string> run_ranks(int world, const std::function<void(Collective&)>& fn,
                                   double timeout_s = 20) {
  const int port = free_port();
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      Env env = {{"RANK", std::to_string(r)},
                 {"WORLD_SIZE", std::to_string(world)},
                 {"MASTER_ADDR", "127.0.0.1"},
                 {"NNPIPE_DIST_PORT", std::to_string(port)},
                 {"NNPIPE_DIST_TIMEOUT", fmt::format("{}", timeout_s)}};
      errors[static_cast<size_t>(r)] = error_of([&] {
        auto comm = make_collective(detect_launch(env));
        ASSERT_STREQ(comm->name(), "tcp");
        ASSERT_EQ(comm->rank(), r);
        fn(*comm);
      });
    });
  for (auto& t : threads) t.join();
  return errors;
}

}  // namespace

TEST(DistEnv, NoLauncherIsOneProcess) {
  const LaunchEnv e = detect_launch({});
  EXPECT_EQ(e.kind, Kind::kNone);
  EXPECT_EQ(e.world, 1);
  EXPECT_EQ(make_collective(e)->world(), 1);
}

TEST(DistEnv, Torchrun) {
  const LaunchEnv e = detect_launch({{"RANK", "1"},
                                     {"WORLD_SIZE", "4"},
                                     {"LOCAL_RANK", "1"},
                                     {"MASTER_ADDR", "node0"},
                                     {"MASTER_PORT", "29500"}});
  EXPECT_EQ(e.kind, Kind::kTcp);
  EXPECT_EQ(e.launcher, "torchrun");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "node0");
  EXPECT_EQ(e.port, 29501);  // torchrun's agent holds MASTER_PORT itself
}

TEST(DistEnv, PortOverrideAndTimeout) {
  const LaunchEnv e = detect_launch({{"RANK", "0"},
                                     {"WORLD_SIZE", "2"},
                                     {"MASTER_ADDR", "h"},
                                     {"MASTER_PORT", "29500"},
                                     {"NNPIPE_DIST_PORT", "4000"},
                                     {"NNPIPE_DIST_TIMEOUT", "7.5"}});
  EXPECT_EQ(e.port, 4000);
  EXPECT_DOUBLE_EQ(e.timeout_s, 7.5);
}

TEST(DistEnv, Slurm) {
  const LaunchEnv e = detect_launch({{"SLURM_PROCID", "3"},
                                     {"SLURM_NTASKS", "8"},
                                     {"SLURM_LOCALID", "1"},
                                     {"MASTER_ADDR", "n1"},
                                     {"MASTER_PORT", "1234"}});
  EXPECT_EQ(e.launcher, "slurm");
  EXPECT_EQ(e.kind, Kind::kTcp);
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.port, 1235);
  // One task needs no address.
  EXPECT_EQ(detect_launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}).kind, Kind::kNone);
  EXPECT_NE(error_of([] {
              detect_launch({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}});
            }).find("MASTER_ADDR is not set"),
            std::string::npos);
}

TEST(DistEnv, OpenMpiWinsAndTcpCanBeForced) {
  const Env env = {{"OMPI_COMM_WORLD_RANK", "1"},
                   {"OMPI_COMM_WORLD_SIZE", "2"},
                   {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                   {"SLURM_PROCID", "0"},
                   {"SLURM_NTASKS", "1"},
                   {"MASTER_ADDR", "h"},
                   {"MASTER_PORT", "100"}};
  const LaunchEnv e = detect_launch(env);
  EXPECT_EQ(e.launcher, "openmpi");
  EXPECT_EQ(e.kind, Kind::kMpi);
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(detect_launch(env, Kind::kTcp).kind, Kind::kTcp);
  EXPECT_EQ(detect_launch(env, Kind::kNone).kind, Kind::kNone);
  if (!mpi_built()) {
    EXPECT_NE(error_of([&] { make_collective(e); }).find("built without MPI"), std::string::npos);
  }
}

TEST(DistEnv, MalformedVariablesAreNamed) {
  EXPECT_NE(error_of([] {
              detect_launch({{"RANK", "2"}, {"WORLD_SIZE", "2"}});
            }).find("RANK=\"2\" is not an integer in [0, 1]"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              detect_launch({{"RANK", "x"}, {"WORLD_SIZE", "2"}});
            }).find("RANK"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              detect_launch({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}});
            }).find("MASTER_PORT"),
            std::string::npos);
  EXPECT_NE(error_of([] {
              detect_launch({{"NNPIPE_DIST_TIMEOUT", "-1"}});
            }).find("NNPIPE_DIST_TIMEOUT"),
            std::string::npos);
  EXPECT_NE(error_of([] { detect_launch({}, Kind::kMpi); }).find("no launcher"), std::string::npos);
  std::optional<Kind> k;
  EXPECT_FALSE(parse_kind("nccl", k));
  EXPECT_TRUE(parse_kind("tcp", k) && k == Kind::kTcp);
}

TEST(DistTcp, EveryOpEqualsTheSumsOnEveryRank) {
  for (int world : {2, 3}) {
    std::vector<std::vector<float>> reduced(static_cast<size_t>(world));
    const auto errors = run_ranks(world, [&](Collective& c) {
      const int r = c.rank();
      // all_reduce of 1001 floats (chunks of unequal size): element i of rank r is r + i/8.
      std::vector<float> v(1001);
      for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(r) + i / 8.0f;
      c.all_reduce(std::span<float>(v), ReduceOp::kSum);
      for (size_t i = 0; i < v.size(); ++i)
        ASSERT_FLOAT_EQ(v[i], world * (world - 1) / 2.0f + world * (i / 8.0f)) << i;
      reduced[static_cast<size_t>(r)] = v;
      std::vector<double> d = {1.0 * r, 2.0};
      c.all_reduce(std::span<double>(d), ReduceOp::kAvg);
      ASSERT_DOUBLE_EQ(d[0], (world - 1) / 2.0);
      ASSERT_DOUBLE_EQ(d[1], 2.0);
      // reduce_scatter: chunk k of rank r holds r*10 + k; rank r ends with sum_r (r*10 + r).
      std::vector<float> rs(static_cast<size_t>(world) * 5);
      for (size_t i = 0; i < rs.size(); ++i) rs[i] = static_cast<float>(r * 10 + i / 5);
      c.reduce_scatter(std::span<float>(rs), ReduceOp::kSum);
      for (int i = 0; i < 5; ++i)
        ASSERT_FLOAT_EQ(rs[static_cast<size_t>(r * 5 + i)],
                        10.0f * world * (world - 1) / 2 + world * r);
      // all_gather: chunk r of rank r is r+1.
      std::vector<float> ag(static_cast<size_t>(world) * 3, -1.0f);
      for (int i = 0; i < 3; ++i) ag[static_cast<size_t>(r * 3 + i)] = static_cast<float>(r + 1);
      c.all_gather(std::span<float>(ag));
      for (size_t i = 0; i < ag.size(); ++i) ASSERT_FLOAT_EQ(ag[i], static_cast<float>(i / 3 + 1));
      // broadcast from the last rank, more than one 4 MiB piece.
      std::vector<uint8_t> b(5u << 20, 0);
      if (r == world - 1)
        for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7);
      c.broadcast(std::span<uint8_t>(b), world - 1);
      for (size_t i = 0; i < b.size(); i += 4099) ASSERT_EQ(b[i], static_cast<uint8_t>(i * 7));
      ASSERT_EQ(c.broadcast(r == 0 ? std::string("session-1") : std::string(), 0), "session-1");
      c.barrier();
    });
    for (int r = 0; r < world; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
    // The same bits on every rank.
    for (int r = 1; r < world; ++r) EXPECT_EQ(reduced[static_cast<size_t>(r)], reduced[0]);
  }
}

TEST(DistTcp, TwoRanksSumInEitherOrderExactly) {
  // a + b == b + a in IEEE arithmetic: two ranks give the bits of one process adding them.
  const auto errors = run_ranks(2, [](Collective& c) {
    std::vector<float> v = {c.rank() ? 1e-8f : 1.0f, c.rank() ? 0.1f : 0.2f};
    c.all_reduce(std::span<float>(v), ReduceOp::kSum);
    ASSERT_EQ(v[0], 1.0f + 1e-8f);
    ASSERT_EQ(v[1], 0.2f + 0.1f);
  });
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

TEST(DistTcp, ADeadPeerIsAClearErrorNotAHang) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto errors = run_ranks(
      2,
      [](Collective& c) {
        c.set_context("step 3");
        if (c.rank() == 1) {
          c.abort(1);  // as if killed: its sockets close
          return;
        }
        std::vector<float> v(100, 1.0f);
        c.all_reduce(std::span<float>(v), ReduceOp::kSum);
      },
      /*timeout_s=*/60);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(errors[0].find("rank 1 disconnected during all_reduce (step 3)"), std::string::npos)
      << errors[0];
  EXPECT_LT(s, 10) << "the error must come from the closed socket, not the 60 s timeout";
}

TEST(DistTcp, ASilentPeerTimesOut) {
  const auto errors = run_ranks(
      2,
      [](Collective& c) {
        if (c.rank() == 1) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1200));
          return;
        }
        std::vector<float> v(10, 1.0f);
        c.all_reduce(std::span<float>(v), ReduceOp::kSum);
      },
      /*timeout_s=*/0.5);
  EXPECT_NE(errors[0].find("no progress with rank 1"), std::string::npos) << errors[0];
}

TEST(DistTcp, ZeroOneStepEqualsUnshardedAdamW) {
  // Three parameters of 5, 7 and 4 elements over 3 ranks (shards of 6 cut through them): after
  // two steps every rank holds the weights of an unsharded AdamW, bit for bit, and gather()
  // returns its moments.
  auto make = [] {
    std::map<std::string, Tensor> p;
    for (auto [name, n] : {std::pair<const char*, int64_t>{"a", 5}, {"b", 7}, {"c", 4}}) {
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = 0.1f * static_cast<float>(i + n);
      p[name] = Tensor::from_f32(v, {n});
    }
    return p;
  };
  auto grads_of = [](const std::map<std::string, Tensor>& p, int step) {
    std::vector<Tensor> g;
    for (const auto& [name, t] : p) {
      std::vector<float> v(static_cast<size_t>(t.numel()));
      for (size_t i = 0; i < v.size(); ++i)
        v[i] = std::sin(static_cast<float>(i + 3 * step) + name[0]);
      g.push_back(Tensor::from_f32(v, {t.numel()}));
    }
    return g;
  };
  const std::vector<double> wd = {0.1, 0.0, 0.1};
  std::map<std::string, Tensor> ref = make();
  AdamW opt(cpu_backend(), AdamWHyper{1e-2, 0.9, 0.999, 1e-8, 0.1});
  for (int s = 0; s < 2; ++s) {
    std::vector<Tensor> g = grads_of(ref, s);
    size_t k = 0;
    for (auto& [name, t] : ref) {
      opt.step(name, t, g[k], wd[k]);
      ++k;
    }
  }
  const auto errors = run_ranks(3, [&](Collective& c) {
    std::map<std::string, Tensor> p = make();
    ShardedAdamW z(cpu_backend(), AdamWHyper{1e-2, 0.9, 0.999, 1e-8, 0.1}, c, p);
    EXPECT_EQ(z.state_bytes(), 2 * (c.rank() < 2 ? 6 : 4) * 4);
    for (int s = 0; s < 2; ++s) z.step(p, grads_of(p, s), wd);
    for (const auto& [name, t] : p) ASSERT_EQ(t.to_f32(), ref.at(name).to_f32()) << name;
    AdamW full(cpu_backend());
    z.gather(full);
    if (c.rank() == 0)
      for (const auto& [name, t] : p) {
        ASSERT_EQ(full.state(name)->exp_avg.to_f32(), opt.state(name)->exp_avg.to_f32());
        ASSERT_EQ(full.state(name)->exp_avg_sq.to_f32(), opt.state(name)->exp_avg_sq.to_f32());
        ASSERT_EQ(full.state(name)->step, 2);
      }
    // scatter() back and one more step: still the unsharded result.
    ShardedAdamW z2(cpu_backend(), AdamWHyper{1e-2, 0.9, 0.999, 1e-8, 0.1}, c, p);
    z2.scatter(full);
    z2.step(p, grads_of(p, 2), wd);
    std::map<std::string, Tensor> ref3 = ref;  // handles: copy values
    for (auto& [name, t] : ref3) t = Tensor::from_f32(ref.at(name).to_f32(), t.shape());
    AdamW opt3 = opt;
    std::vector<Tensor> g = grads_of(ref3, 2);
    size_t k = 0;
    for (auto& [name, t] : ref3) {
      AdamWState st = *opt.state(name);
      st.exp_avg = Tensor::from_f32(st.exp_avg.to_f32(), st.exp_avg.shape());
      st.exp_avg_sq = Tensor::from_f32(st.exp_avg_sq.to_f32(), st.exp_avg_sq.shape());
      opt3.set_state(name, st);
      opt3.step(name, t, g[k], wd[k]);
      ++k;
    }
    for (const auto& [name, t] : p) ASSERT_EQ(t.to_f32(), ref3.at(name).to_f32()) << name;
  });
  for (int r = 0; r < 3; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}
