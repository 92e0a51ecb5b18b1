//! How every program of the firmware example ends in QEMU: an exit through semihosting, which
//! QEMU turns into its own exit status, also from a panic.

use cortex_m_semihosting::debug;

/// Ends the run through semihosting: QEMU exits 0 if `ok`, 1 otherwise.
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::bkpt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    defmt::error!("panic: {}", defmt::Display2Format(info));
    exit(false)
}
