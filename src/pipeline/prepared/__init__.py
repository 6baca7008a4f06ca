"""The prepared-data contract every stage after prepare reads: meta, shards, links."""
