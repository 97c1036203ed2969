"""Custom attention kernels for jaxserve, each beside a plain oracle the tests hold it to."""
