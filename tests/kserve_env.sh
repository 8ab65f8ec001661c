#!/usr/bin/env bash
# KServe's Python SDK in a venv of its own, for tests/test_oip_clients.py: kserve 0.21.0 pins
# protobuf < 7 and grpcio-tools 1.81, which the project's venv (protobuf 7.36.2, grpcio 1.85.3)
# cannot take. The test runs KServe's InferenceRESTClient and InferenceGRPCClient unchanged in
# this venv's python, against the server under test, and is skipped when the venv is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-kserve/bin/python ]; then
  python3 -m venv .venv-kserve
fi
.venv-kserve/bin/pip install -q kserve==0.21.0
.venv-kserve/bin/python -c "import kserve; print('kserve', kserve.__name__, 'ok')"
