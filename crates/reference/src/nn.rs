//! STUB: to be written.
