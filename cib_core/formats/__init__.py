"""Local image formats: OCI image layouts, docker-archive tarballs, and flattened export."""
