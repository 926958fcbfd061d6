//! The discovery log page (70h).
