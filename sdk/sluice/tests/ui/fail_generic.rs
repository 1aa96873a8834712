#[sluice::transform]
fn run<T>(_record: sluice::Record, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
