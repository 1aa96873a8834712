#[sluice::source]
struct NotAnImpl;

fn main() {}
