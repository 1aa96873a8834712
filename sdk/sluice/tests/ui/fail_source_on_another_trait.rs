struct Ticks;

#[sluice::source]
impl Default for Ticks {
    fn default() -> Ticks {
        Ticks
    }
}

fn main() {}
