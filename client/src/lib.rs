//! Async client of ringkv.
