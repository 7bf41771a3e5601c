//! The shortener app of ringkv (work in progress).

fn main() {}
