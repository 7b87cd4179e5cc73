//! Fuzzes the command-ring record decoder (control plane -> data plane: stream commands and
//! partition assignments) and the status-ring decoder (data plane -> control plane): they never
//! panic, and what they accept re-encodes to the same bytes.
#![no_main]

use abi::assign::ReplicaStatus;
use abi::command::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = Command::decode(data) {
        assert_eq!(&command.encode()[..], data);
    }
    if let Ok(status) = ReplicaStatus::decode(data) {
        assert_eq!(&status.encode()[..], data);
    }
});
