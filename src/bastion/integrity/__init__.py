"""Model integrity: manifests in coreutils ``sha256sum`` format and hashing."""
