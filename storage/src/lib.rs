//! Storage engines of ringkv.
