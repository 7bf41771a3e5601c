//! The chat app of ringkv (work in progress).

fn main() {}
