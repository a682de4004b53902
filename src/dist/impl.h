// Factories of the implementations (collective.cpp's make_collective picks one).
#pragma once
#include <memory>

#include "dist/collective.h"

namespace nnpipe::dist {

// Connects to the peers (rank 0 listens on env.master_addr:env.port); tcp.cpp.
std::unique_ptr<Collective> make_tcp_collective(const LaunchEnv& env);
// MPI_Init_thread; mpi.cpp, or mpi_stub.cpp (throws kUnsupported) in a build without MPI.
std::unique_ptr<Collective> make_mpi_collective(const LaunchEnv& env);

}  // namespace nnpipe::dist
