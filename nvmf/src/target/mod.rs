//! The NVMe-oF/TCP target.
