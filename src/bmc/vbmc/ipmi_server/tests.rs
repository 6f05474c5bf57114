//! The endpoint driven without sockets by a fake console: commands and their VM actions,
//! retries and replays, concurrent sessions.

use super::console::*;
use super::*;
use crate::bmc::ipmi::commands::{self as client, ChassisControl};
use crate::bmc::{BootDevice, PowerState};

#[test]
fn a_session_powers_the_vm_and_sets_its_boot_device() {
    let mut ep = endpoint();
    let mut c = login(&mut ep, Instant::now(), "admin", "password", 0xa0a2_a3a4).unwrap();
    let on = client::chassis_control(ChassisControl::PowerUp);
    assert_eq!(
        c.call(&mut ep, &on, &off()).completion,
        0xd4,
        "User level until raised"
    );
    let set = client::set_session_privilege(client::PRIVILEGE_ADMIN);
    assert_eq!(c.call(&mut ep, &set, &off()).completion, 0);

    let status = client::get_chassis_status();
    let read = |c: &mut Console, ep: &mut Endpoint, vm: &Snapshot| {
        client::power_state(&c.call(ep, &status, vm).data)
    };
    assert_eq!(read(&mut c, &mut ep, &off()), Ok(PowerState::Off));
    assert_eq!(c.act(&mut ep, &on, VmAction::PowerOn, Ok(())).completion, 0);
    let running = vm(PowerState::On, BootDevice::Disk, true);
    assert_eq!(read(&mut c, &mut ep, &running), Ok(PowerState::On));
    let failed = Err(BmcError::Protocol("cannot start QEMU".into()));
    assert_eq!(
        c.act(&mut ep, &on, VmAction::PowerOn, failed).completion,
        0xff
    );

    // Kiln's set_boot_device sequence: in progress, ack, flags, complete.
    use client::{PARAM_BOOT_FLAGS, PARAM_BOOT_INFO_ACK, PARAM_SET_IN_PROGRESS, set_boot_option};
    assert_eq!(
        c.call(
            &mut ep,
            &set_boot_option(PARAM_SET_IN_PROGRESS, &[1]),
            &off()
        )
        .completion,
        0
    );
    assert_eq!(
        c.call(
            &mut ep,
            &set_boot_option(PARAM_BOOT_INFO_ACK, &[1, 1]),
            &off()
        )
        .completion,
        0
    );
    let flags = set_boot_option(
        PARAM_BOOT_FLAGS,
        &client::boot_flags(BootDevice::Pxe, false, false),
    );
    let pxe_once = VmAction::SetBoot {
        device: BootDevice::Pxe,
        persistent: false,
    };
    assert_eq!(c.act(&mut ep, &flags, pxe_once, Ok(())).completion, 0);
    assert_eq!(
        c.call(
            &mut ep,
            &set_boot_option(PARAM_SET_IN_PROGRESS, &[0]),
            &off()
        )
        .completion,
        0
    );
    let pxe = vm(PowerState::Off, BootDevice::Pxe, false);
    let got = c.call(&mut ep, &client::get_boot_flags(), &pxe);
    assert_eq!(
        client::parse_boot_flags(&client::check(got, "boot").unwrap()),
        Ok(pxe.boot)
    );

    let unknown = client::Request {
        netfn: 0x0a,
        cmd: 0x10,
        data: vec![],
    };
    assert_eq!(c.call(&mut ep, &unknown, &off()).completion, 0xc1);
}

#[test]
fn a_retry_gets_the_same_answer_without_acting_twice_and_replays_are_dropped() {
    let mut ep = endpoint();
    let mut c = admin(&mut ep);
    let on = client::chassis_control(ChassisControl::PowerUp);
    let first = c.datagram(&on, false);
    let Outcome::Act(VmAction::PowerOn, deferred) =
        ep.handle(&first, peer(), &off(), Instant::now())
    else {
        panic!("power on")
    };
    let answer = ep.finish(deferred, Ok(())).unwrap();
    assert_eq!(c.read(&answer, &on).completion, 0);
    let retry = c.datagram(&on, true);
    let again = reply(ep.handle(&retry, peer(), &off(), Instant::now()));
    assert_eq!(c.read(&again, &on).completion, 0);
    assert_eq!(
        ep.handle(&first, peer(), &off(), Instant::now()),
        Outcome::Ignore,
        "replay"
    );
    let mut tampered = c.datagram(&on, false);
    let at = tampered.len() - 20;
    tampered[at] ^= 0x40;
    assert_eq!(
        ep.handle(&tampered, peer(), &off(), Instant::now()),
        Outcome::Ignore
    );
}

#[test]
fn sessions_are_independent_and_close_one_at_a_time() {
    let mut ep = endpoint();
    let mut a = admin(&mut ep);
    let mut b = login(&mut ep, Instant::now(), "admin", "password", 0x0102_0304).unwrap();
    assert_ne!(a.bmc_id, b.bmc_id);
    let status = client::get_chassis_status();
    assert_eq!(b.call(&mut ep, &status, &off()).completion, 0);
    assert_eq!(
        b.call(&mut ep, &client::close_session(a.bmc_id), &off())
            .completion,
        0xd4,
        "User may not close others"
    );
    assert_eq!(
        a.call(&mut ep, &client::close_session(0x5555), &off())
            .completion,
        0x87
    );
    assert_eq!(
        a.call(&mut ep, &client::close_session(a.bmc_id), &off())
            .completion,
        0
    );
    let d = a.datagram(&status, false);
    assert_eq!(
        ep.handle(&d, peer(), &off(), Instant::now()),
        Outcome::Ignore,
        "closed"
    );
    assert_eq!(b.call(&mut ep, &status, &off()).completion, 0);
    assert_eq!(ep.sessions(), 1);
}
