// A build without MPI (CMake found none, or NNPIPE_MPI=OFF): mpirun launches fail with the fix.
#include "core/error.h"
#include "dist/impl.h"

namespace nnpipe::dist {

bool mpi_built() {
  return false;
}

std::unique_ptr<Collective> make_mpi_collective(const LaunchEnv& env) {
  fail(ErrorCode::kUnsupported,
       "launched by mpirun as rank {} of {}, but this nnpipe was built without MPI: install "
       "libopenmpi-dev and rebuild (CMake NNPIPE_MPI), or keep mpirun and pass --dist tcp with "
       "MASTER_ADDR/MASTER_PORT exported to every rank (mpirun -x), or launch with torchrun",
       env.rank, env.world);
}

}  // namespace nnpipe::dist
