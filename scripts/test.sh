#!/usr/bin/env bash
# The test command: installs what the build needs, builds, runs every test.
# The tests need no Python: fixtures are committed under Tests/MoETuneTests/Fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --mpi   # Open MPI: MPITests start mpirun (moe-tune itself never needs it)
swift build --build-tests
swift test --skip-build
