"""Custom attention kernels for jaxserve, each beside its pure-jnp reference."""
