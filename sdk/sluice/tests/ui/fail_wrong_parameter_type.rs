#[sluice::transform]
fn run(_record: Vec<u8>, _out: &mut sluice::Writer) -> sluice::Result<()> {
    Ok(())
}

fn main() {}
