"""Models by name: the catalog, the Hub, and the services that combine them with the store.

`catalog` (names -> Hub files), `hub` (metadata, resumable downloads), `pull`,
`create`, `resolve` (name or path -> ModelPair, no network), `inspect`
(`gemma show`) and `manage` (rm, verify, tuned draft lengths). Nothing is
imported here, so `import gemma_cli.registry.catalog` stays cheap.
"""
