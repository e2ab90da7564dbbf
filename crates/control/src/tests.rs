#![allow(clippy::unwrap_used)]

use jarvis_sync::hub::{Access, Authorizer};

use crate::access::Action;
use crate::*;

fn open() -> (tempfile::TempDir, Control) {
    let dir = tempfile::tempdir().unwrap();
    let (c, _) = Control::open(&dir.path().join("c.db")).unwrap();
    (dir, c)
}

#[test]
fn tokens_are_hashed_scoped_and_revocable() {
    let (_d, c) = open();
    let rw = c
        .create_token(ADMIN_USER, None, "a", &["session/*".into()], false)
        .unwrap();
    let ro = c
        .create_token(ADMIN_USER, None, "b", &["ws/w1/*".into()], true)
        .unwrap();
    let full = c
        .create_token(ADMIN_USER, None, "full", &["*".into()], false)
        .unwrap();
    let full = c.identify(&full).unwrap();
    let admin = c.identify(&rw).unwrap();
    // A scoped token creates no workspace outside its scopes.
    assert!(c.ensure_workspace(&admin, "w1", "").is_err());
    c.ensure_workspace(&full, "w1", "").unwrap();
    let who = c.identify(&ro).unwrap();
    assert!(who.read_only);
    c.register_session(&admin, "s1", "w1", "t").unwrap();
    assert_eq!(c.authorize(&rw, "session/s1"), Ok(Access::ReadWrite));
    assert!(c.authorize(&rw, "ws/w1/index").is_err());
    assert_eq!(c.authorize(&ro, "ws/w1/index"), Ok(Access::ReadOnly));
    assert!(c.authorize("", "session/s1").is_err());
    assert!(c.authorize("jt_nope", "session/s1").is_err());
    c.revoke_token(admin.token_id, None).unwrap();
    assert_eq!(
        c.authorize(&rw, "session/s1"),
        Err("token revoked".to_owned())
    );
    let raw: String = rusqlite::Connection::open(_d.path().join("c.db"))
        .unwrap()
        .query_row("SELECT group_concat(hash) FROM tokens", [], |r| r.get(0))
        .unwrap();
    assert!(!raw.contains(&rw[3..]));
}

#[test]
fn membership_isolates_users() {
    let (_d, c) = open();
    let a = c.create_user("alice", false).unwrap();
    let b = c.create_user("bob", false).unwrap();
    let ta = c
        .create_token(&a.id, None, "a", &["*".into()], false)
        .unwrap();
    let tb = c
        .create_token(&b.id, None, "b", &["*".into()], false)
        .unwrap();
    let (ia, ib) = (c.identify(&ta).unwrap(), c.identify(&tb).unwrap());
    c.ensure_workspace(&ia, "wa", "A").unwrap();
    c.register_session(&ia, "sa", "wa", "t").unwrap();
    assert!(c.authorize(&ta, "ws/wa/index").is_ok());
    assert!(c.authorize(&ta, "session/sa").is_ok());
    assert!(c.authorize(&tb, "ws/wa/index").is_err());
    assert!(c.authorize(&tb, "ws/wa/file/f1").is_err());
    assert!(c.authorize(&tb, "session/sa").is_err());
    assert!(c.sessions(&ib, None).unwrap().is_empty());
    assert!(c.workspaces(&ib).unwrap().is_empty());
    // Taking an existing id is refused without saying whose it is.
    assert!(matches!(
        c.ensure_workspace(&ib, "wa", ""),
        Err(ControlError::Conflict(_))
    ));
    assert!(matches!(
        c.register_session(&ib, "sa", "wa", ""),
        Err(ControlError::NotFound(_))
    ));
    c.set_member(&ia, "wa", "bob", Some("member")).unwrap();
    assert!(c.authorize(&tb, "session/sa").is_ok());
    assert!(c.set_member(&ib, "wa", "bob", None).is_err());
    c.set_member(&ia, "wa", "bob", None).unwrap();
    assert!(c.authorize(&tb, "session/sa").is_err());
}

#[test]
fn viewers_read_editors_write_owners_manage() {
    let (_d, c) = open();
    let o = c.create_user("olga", false).unwrap();
    let e = c.create_user("ed", false).unwrap();
    let v = c.create_user("vic", false).unwrap();
    let tok = |u: &User| {
        c.identify(
            &c.create_token(&u.id, None, "t", &["*".into()], false)
                .unwrap(),
        )
        .unwrap()
    };
    let (io, ie, iv) = (tok(&o), tok(&e), tok(&v));
    c.ensure_workspace(&io, "w", "").unwrap();
    c.set_member(&io, "w", "ed", Some("editor")).unwrap();
    c.set_member(&io, "w", "vic", Some("viewer")).unwrap();
    c.register_session(&io, "s", "w", "t").unwrap();
    assert_eq!(
        c.document_access(&iv, "session/s").unwrap(),
        Access::ReadOnly
    );
    assert_eq!(
        c.document_access(&iv, "ws/w/index").unwrap(),
        Access::ReadOnly
    );
    assert_eq!(
        c.document_access(&ie, "ws/w/index").unwrap(),
        Access::ReadWrite
    );
    assert!(c.check_session_for(&iv, "s", Action::Write).is_err());
    assert!(c.check_session_for(&ie, "s", Action::Write).is_ok());
    assert!(c.register_session(&iv, "s2", "w", "t").is_err());
    // Neither an editor nor a viewer changes members (or promotes themselves).
    assert!(c.set_member(&ie, "w", "ed", Some("owner")).is_err());
    assert!(c.set_member(&iv, "w", "vic", Some("editor")).is_err());
    assert!(c.set_member(&io, "w", "vic", Some("admin")).is_err());
    // A read-only token of the owner manages nothing.
    let ro = c
        .identify(
            &c.create_token(&o.id, None, "ro", &["*".into()], true)
                .unwrap(),
        )
        .unwrap();
    assert!(c.set_member(&ro, "w", "vic", None).is_err());
    assert_eq!(
        c.document_access(&ro, "ws/w/index").unwrap(),
        Access::ReadOnly
    );
}

#[test]
fn admin_powers_need_the_full_writable_token() {
    let (_d, c) = open();
    let narrow = c
        .identify(
            &c.create_token(ADMIN_USER, None, "n", &["ws/team/*".into()], true)
                .unwrap(),
        )
        .unwrap();
    assert!(narrow.admin_user && !narrow.admin);
    let other = c.create_user("bob", false).unwrap();
    let tb = c
        .identify(
            &c.create_token(&other.id, None, "b", &["*".into()], false)
                .unwrap(),
        )
        .unwrap();
    c.ensure_workspace(&tb, "bobs", "").unwrap();
    assert!(c.document_access(&narrow, "ws/bobs/index").is_err());
    assert!(c.workspaces(&narrow).unwrap().is_empty());
    // Its revocation power is its own account's, within its own grant.
    let full = c.tokens(Some(ADMIN_USER)).unwrap();
    assert!(full.is_empty() || c.revoke_token_as(&narrow, full[0].id).is_err());
    assert!(c.revoke_token_as(&narrow, tb.token_id).is_err());
}

#[test]
fn a_paired_device_gets_at_most_the_approvers_grant() {
    let (_d, c) = open();
    let a = c.create_user("alice", false).unwrap();
    let narrow = c
        .identify(
            &c.create_token(&a.id, None, "n", &["session/s1".into()], false)
                .unwrap(),
        )
        .unwrap();
    let p = c.start_pairing("phone", "10.0.0.1").unwrap();
    c.approve_pairing(&narrow, &p.code).unwrap();
    let (_, token) = c.poll_pairing(&p.device_code).unwrap();
    let dev = c.identify(&token).unwrap();
    assert_eq!(dev.scopes, vec!["session/s1".to_owned()]);
    let ro = c
        .identify(
            &c.create_token(&a.id, None, "r", &["*".into()], true)
                .unwrap(),
        )
        .unwrap();
    let p = c.start_pairing("tablet", "10.0.0.1").unwrap();
    assert!(c.approve_pairing(&ro, &p.code).is_err());
}

#[test]
fn pending_pairings_are_capped_per_address() {
    let (_d, c) = open();
    for _ in 0..MAX_PAIRINGS_PER_ORIGIN {
        c.start_pairing("x", "10.0.0.1").unwrap();
    }
    assert!(c.start_pairing("x", "10.0.0.1").is_err());
    assert!(c.start_pairing("x", "10.0.0.2").is_ok());
}

#[test]
fn documents_and_blobs_are_charged_to_their_first_writer_within_a_quota() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, _) = Control::open(&dir.path().join("c.db")).unwrap();
    c.quotas = Quotas {
        documents: 3,
        blob_bytes: 100,
    };
    let a = c.create_user("alice", false).unwrap();
    let b = c.create_user("bob", false).unwrap();
    let ta = c
        .create_token(&a.id, None, "a", &["*".into()], false)
        .unwrap();
    let tb = c
        .create_token(&b.id, None, "b", &["*".into()], false)
        .unwrap();
    let (ia, ib) = (c.identify(&ta).unwrap(), c.identify(&tb).unwrap());
    c.ensure_workspace(&ia, "w", "").unwrap();
    c.set_member(&ia, "w", "bob", Some("editor")).unwrap();
    c.register_session(&ia, "s", "w", "").unwrap();
    assert!(c.authorize(&ta, "ws/w/file/f1").is_ok());
    // The fourth document is over alice's quota; bob opening alice's costs bob nothing.
    assert!(c.authorize(&ta, "ws/w/file/f2").is_err());
    assert!(c.authorize(&ta, "ws/w/file/f1").is_ok());
    assert!(c.authorize(&tb, "ws/w/file/f1").is_ok());
    assert!(c.authorize(&tb, "ws/w/file/f2").is_ok());
    assert!(c.ensure_workspace(&ia, "w2", "").is_err());
    assert!(c.workspaces(&ia).unwrap().iter().all(|w| w.id != "w2"));
    assert_eq!(c.blob_allowance(&ia, "w", "h1").unwrap(), Some(100));
    c.record_blob(&ia, "w", "h1", 60).unwrap();
    assert_eq!(c.blob_allowance(&ia, "w", "h2").unwrap(), Some(40));
    assert_eq!(c.blob_allowance(&ib, "w", "h1").unwrap(), None);
}

#[test]
fn run_settings_are_written_once() {
    let (_d, c) = open();
    let first = RunSettings {
        permission_mode: Some("plan".into()),
        ..Default::default()
    };
    assert!(c.init_run_settings("s", &first).unwrap());
    let second = RunSettings {
        permission_mode: Some("allow-all".into()),
        ..Default::default()
    };
    assert!(!c.init_run_settings("s", &second).unwrap());
    assert_eq!(c.run_settings("s").unwrap(), Some(first));
    assert_eq!(c.run_settings("t").unwrap(), None);
}

#[test]
fn pairing_issues_one_device_token() {
    let (_d, c) = open();
    let a = c.create_user("alice", false).unwrap();
    let ta = c
        .create_token(&a.id, None, "a", &["*".into()], false)
        .unwrap();
    let ia = c.identify(&ta).unwrap();
    let p = c.start_pairing("laptop", "10.0.0.1").unwrap();
    assert!(matches!(
        c.poll_pairing(&p.device_code),
        Err(ControlError::Pending(_))
    ));
    assert!(c.approve_pairing(&ia, "NOPE-NOPE").is_err());
    c.approve_pairing(&ia, &p.code.to_lowercase().replace('-', ""))
        .unwrap();
    let (device, token) = c.poll_pairing(&p.device_code).unwrap();
    assert!(c.poll_pairing(&p.device_code).is_err());
    let who = c.identify(&token).unwrap();
    assert_eq!(who.user, a.id);
    assert_eq!(who.device.as_deref(), Some(device.id.as_str()));
    c.revoke_device(&device.id, Some(&a.id)).unwrap();
    assert!(c.identify(&token).is_err());
}

#[test]
fn leases_have_one_holder_and_move_by_handoff() {
    let (_d, c) = open();
    let l = c.acquire("s", "d1", 60_000).unwrap();
    assert_eq!((l.device.as_deref(), l.epoch), (Some("d1"), 1));
    assert!(c.acquire("s", "d2", 60_000).is_err());
    // Renewal keeps the epoch; a stale epoch is a lost lease.
    assert_eq!(c.acquire("s", "d1", 60_000).unwrap().epoch, 1);
    assert!(c.renew("s", "d1", 0, 60_000).is_err());
    // Handoff to the cloud: pending until the holder yields.
    let st = c
        .request_handoff("s", CLOUD_DEVICE, "d1", vec![], 60_000)
        .unwrap();
    assert!(matches!(st, HandoffState::Pending { .. }));
    assert!(c.request_handoff("s", "d2", "d2", vec![], 60_000).is_err());
    let expect = vec![ExpectedDoc {
        doc: "session/s".into(),
        sv: "AA==".into(),
    }];
    let l = c.release("s", "d1", 1, expect.clone(), 60_000).unwrap();
    assert_eq!(l.device.as_deref(), Some(CLOUD_DEVICE));
    assert_eq!(l.epoch, 2);
    assert_eq!(l.expect, expect);
    assert!(c.renew("s", "d1", 1, 60_000).is_err());
    assert_eq!(c.leases_of(CLOUD_DEVICE).unwrap().len(), 1);
    // Release without a pending target frees the session.
    let l = c.release("s", CLOUD_DEVICE, 2, vec![], 60_000).unwrap();
    assert_eq!(l.device, None);
    let st = c.request_handoff("s", "d2", "d2", vec![], 60_000).unwrap();
    assert!(matches!(st, HandoffState::Granted { .. }));
}

#[test]
fn expired_holder_loses_a_pending_handoff() {
    let (_d, c) = open();
    c.acquire("s", "d1", 1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    // Expired: the handoff is granted directly.
    let st = c
        .request_handoff("s", CLOUD_DEVICE, "x", vec![], 60_000)
        .unwrap();
    assert!(matches!(st, HandoffState::Granted { .. }));
    c.acquire("t", "d1", 30).unwrap();
    let st = c
        .request_handoff("t", CLOUD_DEVICE, "x", vec![], 60_000)
        .unwrap();
    assert!(matches!(st, HandoffState::Pending { .. }));
    assert!(c.complete_expired_handoffs(60_000).unwrap().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(40));
    let moved = c.complete_expired_handoffs(60_000).unwrap();
    assert_eq!(moved[0].device.as_deref(), Some(CLOUD_DEVICE));
}
