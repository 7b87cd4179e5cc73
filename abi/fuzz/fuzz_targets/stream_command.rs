//! Fuzzes the command-ring record decoder (control plane -> data plane): it never panics and
//! what it accepts re-encodes to the same 16 bytes.
#![no_main]

use abi::command::StreamCommand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = StreamCommand::decode(data) {
        assert_eq!(&command.encode()[..], data);
    }
});
