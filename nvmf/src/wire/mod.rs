//! The NVMe, NVMe-oF and NVMe/TCP wire formats.
