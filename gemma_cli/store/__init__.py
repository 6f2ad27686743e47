"""The local model store: manifests naming content-addressed GGUF blobs.

The bottom layer: names (`names`), paths (`layout`), crash-safe writes and
locks (`atomic`), blobs (`blobs`), manifests (`manifest`, `store`) and
re-hashing (`verify`). It imports nothing from `registry` or `cli`; turning a
user's name into a runnable pair is `gemma_cli.registry.resolve`.
"""
