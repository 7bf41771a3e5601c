//! The drive metadata app of ringkv (work in progress).

fn main() {}
