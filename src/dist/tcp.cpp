// The Tcp collective: torchrun / Slurm launches without MPI.
//
// Rendezvous: rank 0 listens on env.port (MASTER_PORT + 1 by default: torchrun's agent serves its
// own TCPStore on MASTER_PORT); every other rank connects (retrying until the timeout) and sends
// {rank, world, its ring port}; rank 0 answers each with the table of every rank's address. Then
// each rank connects to its ring successor and accepts its predecessor, and the star sockets are
// closed. Collectives run on the ring: reduce-scatter + all-gather for all_reduce (every element
// is summed once, in one fixed order, and that result is what every rank receives: all ranks get
// the same bits), pipelined chunks for broadcast.
//
// Never a hang: sockets are non-blocking and every wait is a poll() with the timeout; a peer that
// closes (a process that died closes its sockets at once) is an error naming it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "dist/impl.h"

namespace nnpipe::dist {
namespace {

using clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x6e6e7031;  // "nnp1": a stray connection is refused, not trusted

struct Hello {  // a rank -> rank 0, and on the ring: predecessor -> successor
  uint32_t magic, rank, world, port;
};
struct Entry {    // rank 0 -> every rank: where each rank's ring listener is
  uint32_t ipv4;  // network order; 0 for rank 0 (= MASTER_ADDR)
  uint32_t port;
};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

void set_nonblocking(int fd) {
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
}

void tune(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  set_nonblocking(fd);
}

int ms_left(clock::time_point deadline) {
  const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - clock::now());
  return static_cast<int>(std::clamp<int64_t>(d.count(), 0, 1 << 30));
}

Fd listen_on(uint16_t port, const std::string& what) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) fail(ErrorCode::kIo, "{}: socket: {}", what, std::strerror(errno));
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(port);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    fail(ErrorCode::kIo,
         "{}: cannot listen on port {}: {} (another program holds it? set NNPIPE_DIST_PORT to a "
         "free port, the same on every rank)",
         what, port, std::strerror(errno));
  if (::listen(fd.get(), 1024) != 0)
    fail(ErrorCode::kIo, "{}: listen: {}", what, std::strerror(errno));
  set_nonblocking(fd.get());
  return fd;
}

uint16_t port_of(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// Accepts one connection before the deadline; returns it and the peer's IPv4 address.
Fd accept_one(int lfd, clock::time_point deadline, uint32_t* ipv4, const std::string& what) {
  for (;;) {
    pollfd p{lfd, POLLIN, 0};
    const int n = ::poll(&p, 1, ms_left(deadline));
    if (n < 0 && errno == EINTR) continue;
    if (n == 0)
      fail(ErrorCode::kIo, "{}: no connection from the other ranks within the timeout", what);
    sockaddr_in a{};
    socklen_t len = sizeof a;
    const int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&a), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) continue;
      fail(ErrorCode::kIo, "{}: accept: {}", what, std::strerror(errno));
    }
    if (ipv4) *ipv4 = a.sin_addr.s_addr;
    tune(fd);
    return Fd(fd);
  }
}

// Connects to host:port, retrying refused connections (the listener may not be up yet) until the
// deadline.
Fd connect_to(const std::string& host, uint16_t port, clock::time_point deadline,
              const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  std::string last = "timed out";
  while (clock::now() < deadline) {
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) {
      last = fmt::format("cannot resolve {}: {}", host, gai_strerror(rc));
    } else {
      Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      const int c = ::connect(fd.get(), res->ai_addr, res->ai_addrlen);
      const int err = errno;
      ::freeaddrinfo(res);
      if (c == 0) {
        tune(fd.get());
        return fd;
      }
      last = std::strerror(err);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  fail(ErrorCode::kIo, "{}: cannot connect to {}:{} within the timeout: {}", what, host, port,
       last);
}

}  // namespace

class Tcp final : public Collective {
 public:
  explicit Tcp(const LaunchEnv& env)
      : rank_(env.rank), world_(env.world), local_rank_(env.local_rank), timeout_s_(env.timeout_s) {
    const clock::time_point deadline =
        clock::now() +
        std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(timeout_s_));
    const std::string what = fmt::format("tcp rendezvous (rank {} of {}, {}:{})", rank_, world_,
                                         env.master_addr, env.port);
    Fd ring = listen_on(0, what);
    const uint32_t ring_port = port_of(ring.get());
    std::vector<Entry> table(static_cast<size_t>(world_));
    if (rank_ == 0) {
      Fd master = listen_on(static_cast<uint16_t>(env.port), what);
      std::vector<Fd> peers(static_cast<size_t>(world_));
      table[0] = {0, ring_port};
      for (int i = 1; i < world_; ++i) {
        uint32_t ip = 0;
        Fd c = accept_one(master.get(), deadline, &ip, what);
        Hello h{};
        recv_all(c.get(), &h, sizeof h, -1, "rendezvous", deadline);
        if (h.magic != kMagic || h.world != static_cast<uint32_t>(world_) || h.rank == 0 ||
            h.rank >= static_cast<uint32_t>(world_) || peers[h.rank].get() >= 0 || h.port == 0 ||
            h.port > 65535)
          fail(ErrorCode::kInvalidArgument,
               "{}: a peer announced rank {} of {} (expected a distinct rank in 1..{} of {}): "
               "ranks launched with different WORLD_SIZE, or another program on this port",
               what, h.rank, h.world, world_ - 1, world_);
        table[h.rank] = {ip, h.port};
        peers[h.rank] = std::move(c);
      }
      for (int i = 1; i < world_; ++i)
        send_all(peers[i].get(), table.data(), table.size() * sizeof(Entry), i, "rendezvous",
                 deadline);
    } else {
      Fd c = connect_to(env.master_addr, static_cast<uint16_t>(env.port), deadline, what);
      const Hello h{kMagic, static_cast<uint32_t>(rank_), static_cast<uint32_t>(world_), ring_port};
      send_all(c.get(), &h, sizeof h, 0, "rendezvous", deadline);
      recv_all(c.get(), table.data(), table.size() * sizeof(Entry), 0, "rendezvous", deadline);
    }
    // The ring: connect to the successor (its listener's backlog takes the connection even before
    // it accepts), then accept the predecessor.
    const int next = (rank_ + 1) % world_, prev = (rank_ + world_ - 1) % world_;
    std::string host = env.master_addr;
    if (next != 0) {
      char buf[INET_ADDRSTRLEN];
      in_addr a{table[next].ipv4};
      host = ::inet_ntop(AF_INET, &a, buf, sizeof buf);
    }
    next_ = connect_to(host, static_cast<uint16_t>(table[next].port), deadline, what);
    const Hello h{kMagic, static_cast<uint32_t>(rank_), static_cast<uint32_t>(world_), 0};
    send_all(next_.get(), &h, sizeof h, next, "rendezvous", deadline);
    prev_ = accept_one(ring.get(), deadline, nullptr, what);
    Hello ph{};
    recv_all(prev_.get(), &ph, sizeof ph, prev, "rendezvous", deadline);
    if (ph.magic != kMagic || ph.rank != static_cast<uint32_t>(prev))
      fail(ErrorCode::kInvalidArgument, "{}: ring predecessor announced rank {}, expected {}", what,
           ph.rank, prev);
    next_rank_ = next;
    prev_rank_ = prev;
  }

  const char* name() const override { return "tcp"; }
  int rank() const override { return rank_; }
  int world() const override { return world_; }
  int local_rank() const override { return local_rank_; }

  void all_reduce(std::span<float> buf, ReduceOp op) override { ring_all_reduce(buf, op); }
  void all_reduce(std::span<double> buf, ReduceOp op) override { ring_all_reduce(buf, op); }
  void reduce_scatter(std::span<float> buf, ReduceOp op) override {
    check_chunks(buf.size(), "reduce_scatter");
    const auto b = bounds(buf.size());
    ring_reduce_scatter(buf, b, "reduce_scatter");
    if (op == ReduceOp::kAvg)
      for (size_t i = b[rank_]; i < b[rank_ + 1]; ++i) buf[i] /= static_cast<float>(world_);
  }
  void all_gather(std::span<float> buf) override {
    check_chunks(buf.size(), "all_gather");
    ring_all_gather(buf, bounds(buf.size()), "all_gather");
  }
  void broadcast(std::span<uint8_t> buf, int root) override {
    if (root < 0 || root >= world_)
      fail(ErrorCode::kInvalidArgument, "broadcast: root {} of {} ranks", root, world_);
    constexpr size_t kPiece = size_t{4} << 20;  // pipelined along the ring
    for (size_t at = 0; at < buf.size(); at += kPiece) {
      const size_t n = std::min(kPiece, buf.size() - at);
      if (rank_ != root) recv_all(prev_.get(), buf.data() + at, n, prev_rank_, "broadcast");
      if (next_rank_ != root) send_all(next_.get(), buf.data() + at, n, next_rank_, "broadcast");
    }
  }
  void barrier() override {
    double x = 0;
    ring_all_reduce(std::span<double>(&x, 1), ReduceOp::kSum);
  }
  // shutdown(), not close(): a poll() on another thread wakes up (POLLHUP) and that collective
  // fails; the descriptors close with the object.
  void abort(int) override { cancel(); }
  void cancel() override {
    if (next_.get() >= 0) ::shutdown(next_.get(), SHUT_RDWR);
    if (prev_.get() >= 0) ::shutdown(prev_.get(), SHUT_RDWR);
  }
  using Collective::all_reduce;
  using Collective::broadcast;

 private:
  template <typename T>
  void ring_all_reduce(std::span<T> buf, ReduceOp op) {
    if (world_ == 1) return;
    const auto b = bounds(buf.size());
    ring_reduce_scatter(buf, b, "all_reduce");
    ring_all_gather(buf, b, "all_reduce");
    if (op == ReduceOp::kAvg)
      for (T& x : buf) x /= static_cast<T>(world_);
  }

  // Chunk c is [b[c], b[c+1]).
  std::vector<size_t> bounds(size_t n) const {
    std::vector<size_t> b(static_cast<size_t>(world_) + 1);
    for (int c = 0; c <= world_; ++c)
      b[c] = static_cast<size_t>(static_cast<unsigned __int128>(n) * c / world_);
    return b;
  }
  void check_chunks(size_t n, const char* op) const {
    if (n % static_cast<size_t>(world_) != 0)
      fail(ErrorCode::kInvalidArgument, "{}: {} elements do not split into {} equal chunks",
           describe(op), n, world_);
  }
  int mod(int x) const { return ((x % world_) + world_) % world_; }

  // Step s sends chunk r-s-1 to the successor and adds the predecessor's chunk r-s-2 into ours;
  // after world-1 steps chunk r holds the sum over all ranks (accumulated rank r+1, r+2, ..., r).
  template <typename T>
  void ring_reduce_scatter(std::span<T> buf, const std::vector<size_t>& b, const char* op) {
    size_t most = 0;
    for (int c = 0; c < world_; ++c) most = std::max(most, b[c + 1] - b[c]);
    std::vector<T> tmp(most);
    for (int s = 0; s + 1 < world_; ++s) {
      const int sc = mod(rank_ - s - 1), rc = mod(rank_ - s - 2);
      exchange(reinterpret_cast<const uint8_t*>(buf.data() + b[sc]),
               (b[sc + 1] - b[sc]) * sizeof(T), reinterpret_cast<uint8_t*>(tmp.data()),
               (b[rc + 1] - b[rc]) * sizeof(T), op);
      T* dst = buf.data() + b[rc];
      for (size_t i = 0, n = b[rc + 1] - b[rc]; i < n; ++i) dst[i] += tmp[i];
    }
  }
  // Step s passes chunk r-s on and receives chunk r-s-1.
  template <typename T>
  void ring_all_gather(std::span<T> buf, const std::vector<size_t>& b, const char* op) {
    for (int s = 0; s + 1 < world_; ++s) {
      const int sc = mod(rank_ - s), rc = mod(rank_ - s - 1);
      exchange(reinterpret_cast<const uint8_t*>(buf.data() + b[sc]),
               (b[sc + 1] - b[sc]) * sizeof(T), reinterpret_cast<uint8_t*>(buf.data() + b[rc]),
               (b[rc + 1] - b[rc]) * sizeof(T), op);
    }
  }

  [[noreturn]] void lost(int peer, const char* op, const std::string& why) const {
    fail(ErrorCode::kIo, "rank {} disconnected during {} (seen by rank {}: {})", peer, describe(op),
         rank_, why);
  }
  [[noreturn]] void timed_out(int peer, const char* op) const {
    fail(ErrorCode::kIo,
         "rank {}: no progress with rank {} for {} s during {} (NNPIPE_DIST_TIMEOUT): a rank is "
         "stuck or much slower",
         rank_, peer, timeout_s_, describe(op));
  }

  // Sends sn bytes to the successor while receiving rn bytes from the predecessor.
  void exchange(const uint8_t* sbuf, size_t sn, uint8_t* rbuf, size_t rn, const char* op) {
    size_t sent = 0, got = 0;
    while (sent < sn || got < rn) {
      pollfd p[2];
      nfds_t n = 0;
      int si = -1, ri = -1;
      if (sent < sn) {
        si = static_cast<int>(n);
        p[n++] = {next_.get(), POLLOUT, 0};
      }
      if (got < rn) {
        ri = static_cast<int>(n);
        p[n++] = {prev_.get(), POLLIN, 0};
      }
      const int k = ::poll(p, n, static_cast<int>(timeout_s_ * 1000));
      if (k < 0 && errno == EINTR) continue;
      if (k == 0) timed_out(got < rn ? prev_rank_ : next_rank_, op);
      if (ri >= 0 && p[ri].revents) got += recv_some(rbuf + got, rn - got, op);
      if (si >= 0 && p[si].revents)
        sent += send_some(next_.get(), sbuf + sent, sn - sent, next_rank_, op, p[si].revents);
    }
  }
  size_t recv_some(uint8_t* buf, size_t n, const char* op) {
    return recv_some_from(prev_.get(), buf, n, prev_rank_, op);
  }
  size_t recv_some_from(int fd, uint8_t* buf, size_t n, int peer, const char* op) const {
    const ssize_t r = ::recv(fd, buf, n, MSG_DONTWAIT);
    if (r > 0) return static_cast<size_t>(r);
    if (r == 0) lost(peer, op, "connection closed");
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    lost(peer, op, std::strerror(errno));
  }
  size_t send_some(int fd, const uint8_t* buf, size_t n, int peer, const char* op,
                   short revents) const {
    const ssize_t r = ::send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r >= 0) return static_cast<size_t>(r);
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
      if (revents & (POLLERR | POLLHUP)) lost(peer, op, "connection reset");
      return 0;
    }
    lost(peer, op, std::strerror(errno));
  }
  void send_all(int fd, const void* data, size_t n, int peer, const char* op,
                std::optional<clock::time_point> deadline = std::nullopt) const {
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t done = 0; done < n;) {
      pollfd q{fd, POLLOUT, 0};
      const int k =
          ::poll(&q, 1, deadline ? ms_left(*deadline) : static_cast<int>(timeout_s_ * 1000));
      if (k < 0 && errno == EINTR) continue;
      if (k == 0) timed_out(peer, op);
      done += send_some(fd, p + done, n - done, peer, op, q.revents);
    }
  }
  void recv_all(int fd, void* data, size_t n, int peer, const char* op,
                std::optional<clock::time_point> deadline = std::nullopt) const {
    auto* p = static_cast<uint8_t*>(data);
    for (size_t done = 0; done < n;) {
      pollfd q{fd, POLLIN, 0};
      const int k =
          ::poll(&q, 1, deadline ? ms_left(*deadline) : static_cast<int>(timeout_s_ * 1000));
      if (k < 0 && errno == EINTR) continue;
      if (k == 0) timed_out(peer, op);
      done += recv_some_from(fd, p + done, n - done, peer, op);
    }
  }

  int rank_, world_, local_rank_;
  double timeout_s_;
  int next_rank_ = 0, prev_rank_ = 0;
  Fd next_, prev_;  // to the successor (we only send), from the predecessor (we only receive)
};

std::unique_ptr<Collective> make_tcp_collective(const LaunchEnv& env) {
  return std::make_unique<Tcp>(env);
}

}  // namespace nnpipe::dist
