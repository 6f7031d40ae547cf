"""Two-party secure-inference (MPC) cost of our networks, measured with SecretFlow SPU.

SPU 0.9.5 (2-party SEMI2K, ring FM64, its in-process simulator) runs a network or one of its pieces with every
input secret-shared (the server's weights and the client's image) and reports the communication rounds, bytes
and compute time of the run. SPU needs numpy 1.26 and jax 0.4.34, which break ray, pandas and pyarrow here, so
it lives in a venv of its own (`.venv-mpc` beside the repo root; `bash scripts/setup_mpc.sh` creates it):

    pieces      the MPC cost decomposition of a `nas.blocks.Block` (pure Python: both sides import it)
    jax_net     the pieces and whole networks as jax functions, in inference form (venv side: numpy + jax)
    spu_worker  `python -m nas.mpc.spu_worker REQUEST.json RESULT.json`, run by the venv's python
    runner      the main side (torch, no jax): writes requests, runs the worker, reads its results

This file imports nothing, so the venv can import the package without torch.
"""
