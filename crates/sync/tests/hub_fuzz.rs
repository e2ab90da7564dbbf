//! A seeded fuzz of what a peer can send the hub: Yjs updates, state vectors and awareness
//! payloads, mutated from valid ones (bit flips, truncation, varint inflation, splices, random
//! bytes), each sent through `Hub::connect` after a valid base update, in whatever build the
//! tests run (debug in CI, so yrs' debug assertions and overflow checks are live).
//!
//! What must hold for every input: no task panics (a panic yrs raises is contained by the hub
//! and answered with a 4400 close); a refused update leaves the document exactly as it was;
//! the hub keeps serving other connections.
//!
//! `JARVIS_FUZZ_INPUTS` (default 10,000) and `JARVIS_FUZZ_SEED` set the run. Inputs that made
//! yrs panic (contained) can be kept as files with `JARVIS_FUZZ_SAVE=1`, one per panic site;
//! every file in `tests/crashers/` is replayed by `saved_crashers_never_panic_a_task`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jarvis_sync::awareness::{self, AwarenessEntry};
use jarvis_sync::hub::{Access, Authorizer, CloseReason, Hub, HubConfig, Outbound, close_code};
use jarvis_sync::protocol::{AuthMessage, Frame, Limits, Message, SyncMessage};
use jarvis_sync::store::MemoryStore;
use tokio::sync::mpsc;
use yrs::types::Attrs;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, TextPrelim, Transact,
    Update, XmlElementPrelim, XmlFragment, XmlTextPrelim,
};

struct Tokens;
impl Authorizer for Tokens {
    fn authorize(&self, token: &str, _doc: &str) -> Result<Access, String> {
        match token {
            "rw" => Ok(Access::ReadWrite),
            "ro" => Ok(Access::ReadOnly),
            _ => Err("unknown token".into()),
        }
    }
}

/// splitmix64: tiny, seedable, and the same on every platform and rand version.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// What a fuzz input is sent as. The first byte of a crasher file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Update = 0,
    Step2 = 1,
    Step1 = 2,
    Awareness = 3,
    /// A whole encoded frame (address and message type included).
    Frame = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        [
            Kind::Update,
            Kind::Step2,
            Kind::Step1,
            Kind::Awareness,
            Kind::Frame,
        ]
        .into_iter()
        .find(|k| *k as u8 == b)
    }
}

const DOC: &str = "fuzz/doc";

fn message(kind: Kind, payload: Vec<u8>) -> Option<Message> {
    Some(match kind {
        Kind::Update => Message::Sync(SyncMessage::Update(payload)),
        Kind::Step2 => Message::Sync(SyncMessage::Step2(payload)),
        Kind::Step1 => Message::Sync(SyncMessage::Step1(payload)),
        Kind::Awareness => Message::Awareness(payload),
        Kind::Frame => return None,
    })
}

fn frame_bytes(address: &str, kind: Kind, payload: &[u8]) -> Vec<u8> {
    match message(kind, payload.to_vec()) {
        Some(m) => Frame::doc(address, m).encode(),
        None => payload.to_vec(),
    }
}

/// The base document every input meets (so hostile updates can point into real content:
/// origins, parents, deletions), and valid inputs derived from it.
struct Corpus {
    base: Vec<u8>,
    /// What the hub holds after the base alone.
    base_snapshot: yrs::Snapshot,
    inputs: Vec<(Kind, Vec<u8>)>,
}

fn state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(build_corpus)
}

fn build_corpus() -> Corpus {
    let mut inputs = Vec::new();
    // The base: every kind of shared type and content yrs encodes.
    let a = Doc::with_client_id(1);
    let text = a.get_or_insert_text("text");
    let map = a.get_or_insert_map("map");
    let array = a.get_or_insert_array("array");
    let xml = a.get_or_insert_xml_fragment("xml");
    {
        let mut t = a.transact_mut();
        text.insert(&mut t, 0, "hello world, ünïcødé 🎉");
        let bold: Attrs = Attrs::from([("bold".into(), Any::Bool(true))]);
        text.format(&mut t, 0, 5, bold.clone());
        text.insert_with_attributes(&mut t, 5, " there", bold);
        text.insert_embed(&mut t, 3, Any::from("embed"));
        map.insert(&mut t, "n", 42i64);
        map.insert(&mut t, "f", 1.5f64);
        map.insert(&mut t, "s", "str");
        map.insert(&mut t, "b", true);
        map.insert(&mut t, "null", Any::Null);
        map.insert(&mut t, "bin", Any::from(vec![0u8, 1, 2, 255]));
        map.insert(
            &mut t,
            "any",
            Any::from(std::collections::HashMap::from([(
                "k".to_owned(),
                Any::from(vec![Any::from(1i64), Any::from("x")]),
            )])),
        );
        map.insert(&mut t, "nested_text", TextPrelim::new("inner"));
        map.insert(
            &mut t,
            "nested_map",
            MapPrelim::from([("x", Any::from(1i64))]),
        );
        map.insert(&mut t, "nested_array", ArrayPrelim::from([1i64, 2, 3]));
        array.insert_range(&mut t, 0, [1i64, 2, 3]);
        array.push_back(&mut t, "four");
        array.push_back(&mut t, MapPrelim::from([("in", Any::from("array"))]));
        let el = xml.insert(&mut t, 0, XmlElementPrelim::empty("p"));
        el.insert(&mut t, 0, XmlTextPrelim::new("para"));
        text.remove_range(&mut t, 1, 2);
        array.remove(&mut t, 1);
    }
    let base = state(&a);
    inputs.push((Kind::Update, base.clone()));
    inputs.push((Kind::Step1, StateVector::default().encode_v1()));
    inputs.push((Kind::Step1, a.transact().state_vector().encode_v1()));

    // Edits by another client into the base: origins, parents and deletions that reference it.
    let b = Doc::with_client_id(2);
    b.transact_mut()
        .apply_update(Update::decode_v1(&base).unwrap())
        .unwrap();
    let edits: Vec<fn(&Doc)> = vec![
        |d| {
            let t = d.get_or_insert_text("text");
            t.insert(&mut d.transact_mut(), 4, "INSERTED")
        },
        |d| {
            let t = d.get_or_insert_text("text");
            t.remove_range(&mut d.transact_mut(), 0, 6)
        },
        |d| {
            let m = d.get_or_insert_map("map");
            let mut t = d.transact_mut();
            if let Some(yrs::Out::YText(inner)) = m.get(&t, "nested_text") {
                inner.insert(&mut t, 2, "deep");
            }
        },
        |d| {
            let m = d.get_or_insert_map("map");
            let mut t = d.transact_mut();
            if let Some(yrs::Out::YMap(inner)) = m.get(&t, "nested_map") {
                inner.insert(&mut t, "y", "z");
            }
        },
        |d| {
            let a = d.get_or_insert_array("array");
            let mut t = d.transact_mut();
            a.insert(&mut t, 1, 99i64);
            a.remove(&mut t, 0);
        },
        |d| {
            let m = d.get_or_insert_map("map");
            let mut t = d.transact_mut();
            m.remove(&mut t, "s");
            m.insert(&mut t, "n", 43i64);
        },
        |d| {
            let x = d.get_or_insert_xml_fragment("xml");
            let mut t = d.transact_mut();
            x.insert(&mut t, 1, XmlTextPrelim::new("tail"));
        },
    ];
    for edit in &edits {
        let before = b.transact().state_vector();
        edit(&b);
        let diff = b.transact().encode_diff_v1(&before);
        inputs.push((Kind::Update, diff.clone()));
        inputs.push((Kind::Step2, diff));
    }
    inputs.push((Kind::Step1, b.transact().state_vector().encode_v1()));
    // A whole frame, so the address and message type get mutated too.
    inputs.push((
        Kind::Frame,
        Frame::doc(DOC, Message::Sync(SyncMessage::Update(inputs[4].1.clone()))).encode(),
    ));

    let entries = [
        AwarenessEntry {
            client_id: 7,
            clock: 1,
            state: r##"{"user":{"name":"a","color":"#f00"},"cursor":null}"##.into(),
        },
        AwarenessEntry {
            client_id: 1 << 40,
            clock: 300,
            state: "null".into(),
        },
    ];
    inputs.push((Kind::Awareness, awareness::encode_update(&entries)));
    inputs.push((Kind::Awareness, awareness::encode_update(&entries[..1])));
    let base_snapshot = a.transact().snapshot();
    Corpus {
        base,
        base_snapshot,
        inputs,
    }
}

/// A mutated input: a corpus entry under 1–3 stacked mutations, or random bytes.
fn mutate(rng: &mut Rng) -> (Kind, Vec<u8>) {
    let c = corpus();
    if rng.below(16) == 0 {
        let kinds = [Kind::Update, Kind::Step1, Kind::Awareness, Kind::Step2];
        let kind = kinds[rng.below(kinds.len())];
        let len = rng.below(64);
        return (kind, (0..len).map(|_| rng.byte()).collect());
    }
    let (kind, seed) = &c.inputs[rng.below(c.inputs.len())];
    let mut data = seed.clone();
    for _ in 0..1 + rng.below(3) {
        let len = data.len();
        match rng.below(8) {
            0 => {
                // Bit flips.
                for _ in 0..1 + rng.below(4) {
                    if !data.is_empty() {
                        let i = rng.below(data.len());
                        data[i] ^= 1 << rng.below(8);
                    }
                }
            }
            1 => {
                // Interesting byte values.
                if !data.is_empty() {
                    let i = rng.below(len);
                    data[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, rng.byte()][rng.below(6)];
                }
            }
            2 => data.truncate(rng.below(len + 1)),
            3 => {
                // Varint inflation: a huge value, an overlong encoding, or a dangling
                // continuation bit where a small integer was.
                let i = rng.below(len + 1);
                let patch: Vec<u8> = match rng.below(4) {
                    0 => vec![0xff, 0xff, 0xff, 0xff, 0x0f],
                    1 => vec![0xff; 10],
                    2 => vec![0x80, 0x80, 0x80, 0x00],
                    _ => vec![0xfe, 0xff, 0xff, 0xff, 0x07],
                };
                if rng.below(2) == 0 && i < len {
                    let end = (i + 1).min(len);
                    data.splice(i..end, patch);
                } else {
                    data.splice(i..i, patch);
                }
            }
            4 => {
                // Splice with another input.
                let (_, other) = &c.inputs[rng.below(c.inputs.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            5 => {
                // Duplicate a range.
                if len > 0 {
                    let a = rng.below(len);
                    let b = (a + 1 + rng.below(16)).min(len);
                    let chunk = data[a..b].to_vec();
                    let at = rng.below(len + 1);
                    data.splice(at..at, chunk);
                }
            }
            6 => {
                // Delete a range.
                if len > 0 {
                    let a = rng.below(len);
                    let b = (a + 1 + rng.below(8)).min(len);
                    data.drain(a..b);
                }
            }
            _ => {
                // Insert random bytes.
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(at..at, bytes);
            }
        }
    }
    (*kind, data)
}

/// The panic record is process-wide: the tests here take turns so none sees another's panics.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Panics raised anywhere in this process (yrs' contained ones included): location → message.
fn panics() -> &'static Mutex<Vec<(String, String)>> {
    static PANICS: OnceLock<Mutex<Vec<(String, String)>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if let Some(p) = PANICS.get() {
                p.lock().unwrap_or_else(|e| e.into_inner()).push((at, msg));
            }
        }));
        Mutex::new(Vec::new())
    })
}

fn take_panics() -> Vec<(String, String)> {
    std::mem::take(&mut *panics().lock().unwrap_or_else(|e| e.into_inner()))
}

fn new_hub() -> Hub {
    Hub::new(
        Arc::new(MemoryStore::new()),
        Arc::new(Tokens),
        HubConfig::default(),
    )
}

async fn next(rx: &mut mpsc::Receiver<Outbound>) -> Option<Outbound> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten()
}

/// The observable state of a document on the hub: state vector and delete set.
async fn snapshot(hub: &Hub, name: &str) -> yrs::Snapshot {
    let bytes = hub.document_state(name).await.unwrap();
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&bytes).unwrap())
        .unwrap();
    doc.transact().snapshot()
}

/// How the hub answered one input.
#[derive(Debug)]
enum Outcome {
    Accepted,
    Closed(CloseReason),
}

/// Sends the base, then the input, on a fresh document; checks that a refused update left the
/// document as the base had it.
async fn run_one(hub: Hub, name: String, read_only: bool, kind: Kind, payload: Vec<u8>) -> Outcome {
    // A whole frame carries its own address: the one document all such inputs share.
    let name = if kind == Kind::Frame {
        DOC.to_owned()
    } else {
        name
    };
    let (mut c, mut rx, _kill) = hub.connect();
    c.handle(&Frame::doc(&name, auth(if read_only { "ro" } else { "rw" })).encode())
        .await
        .unwrap();
    // The base always goes in read-write, on its own connection (the input's may be
    // read-only). Applied at once; its commit is not waited for (a reload waits for it).
    let (mut w, _wrx, _) = hub.connect();
    w.handle(&Frame::doc(&name, auth("rw")).encode())
        .await
        .unwrap();
    w.handle(
        &Frame::doc(
            &name,
            Message::Sync(SyncMessage::Update(corpus().base.clone())),
        )
        .encode(),
    )
    .await
    .unwrap();
    let bytes = frame_bytes(&name, kind, &payload);
    let outcome = match c.handle(&bytes).await {
        Ok(()) => Outcome::Accepted,
        Err(reason) => Outcome::Closed(reason),
    };
    drop((c, w));
    while rx.try_recv().is_ok() {}
    if let Outcome::Closed(reason) = &outcome
        && matches!(kind, Kind::Update | Kind::Step2)
    {
        // Nothing of a refused update stays in the document, even one yrs failed part-way.
        assert!(
            snapshot(&hub, &name).await == corpus().base_snapshot,
            "a refused update ({reason:?}) changed the document"
        );
    }
    outcome
}

fn auth(token: &str) -> Message {
    Message::Auth(AuthMessage::Token {
        token: token.into(),
        provider_version: None,
    })
}

/// The hub still serves an honest client: authenticate, handshake, an update acknowledged.
async fn assert_serves(hub: &Hub, name: &str) {
    let (mut c, mut rx, _) = hub.connect();
    c.handle(&Frame::doc(name, auth("rw")).encode())
        .await
        .unwrap();
    c.handle(
        &Frame::doc(
            name,
            Message::Sync(SyncMessage::Step1(StateVector::default().encode_v1())),
        )
        .encode(),
    )
    .await
    .unwrap();
    let d = Doc::new();
    let t = d.get_or_insert_text("text");
    t.insert(&mut d.transact_mut(), 0, "still here");
    c.handle(&Frame::doc(name, Message::Sync(SyncMessage::Update(state(&d)))).encode())
        .await
        .unwrap();
    let mut acked = false;
    for _ in 0..4 {
        match next(&mut rx).await {
            Some(Outbound::Frame(f)) => {
                if let Ok(Frame::Doc {
                    message: Message::SyncStatus(true),
                    ..
                }) = Frame::decode(&f, &Limits::default())
                {
                    acked = true;
                    break;
                }
            }
            other => panic!("an honest client got {other:?}"),
        }
    }
    assert!(acked, "an honest update was not acknowledged");
}

/// Close codes a hostile input may get: malformed (4400), too big (1009), over a limit (4205,
/// 4413), reconnect (1013, a poisoned document's other users).
const ALLOWED: &[u16] = &[
    close_code::BAD_REQUEST,
    close_code::MESSAGE_TOO_BIG,
    close_code::RESET_CONNECTION,
    close_code::DOCUMENT_TOO_LARGE,
    close_code::TRY_AGAIN_LATER,
];

fn crashers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/crashers")
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    closes: BTreeMap<u16, usize>,
    /// Close reasons with numbers taken out, for the summary.
    reasons: BTreeMap<String, usize>,
    /// Panic site inside yrs (contained) → (count, first input).
    contained: BTreeMap<String, (usize, Kind, Vec<u8>)>,
    escaped: Vec<String>,
}

/// Runs a batch of inputs at once (each on its own document). When the hub caught a panic in a
/// batch of several, each input is run again alone on a fresh hub to find which one it was.
async fn run_batch(hub: &Hub, tally: &mut Tally, batch: Vec<(String, bool, Kind, Vec<u8>)>) {
    take_panics();
    let several = batch.len() > 1;
    let copy = several.then(|| batch.clone());
    let first = batch.first().map(|(_, _, k, p)| (*k, p.clone()));
    let tasks: Vec<_> = batch
        .into_iter()
        .map(|(name, ro, kind, p)| {
            let task = tokio::spawn(run_one(hub.clone(), name, ro, kind, p.clone()));
            (kind, p, task)
        })
        .collect();
    for (kind, p, task) in tasks {
        match task.await {
            Ok(Outcome::Accepted) => tally.accepted += 1,
            Ok(Outcome::Closed(r)) => {
                assert!(ALLOWED.contains(&r.code), "unexpected close {r:?}");
                *tally.closes.entry(r.code).or_default() += 1;
                let reason: String = r.reason.chars().filter(|c| !c.is_ascii_digit()).collect();
                *tally.reasons.entry(reason).or_default() += 1;
            }
            Err(e) => tally
                .escaped
                .push(format!("{kind:?} {}: {e}", hex::encode(&p))),
        }
    }
    let panicked = take_panics();
    if let (Some(batch), false) = (copy, panicked.is_empty()) {
        let alone = new_hub();
        for (name, ro, kind, p) in batch {
            let _ = run_one(alone.clone(), name, ro, kind, p.clone()).await;
            for (at, msg) in take_panics() {
                let slot =
                    tally
                        .contained
                        .entry(format!("{at}: {msg}"))
                        .or_insert((0, kind, p.clone()));
                slot.0 += 1;
            }
        }
        alone.shutdown().await;
        return;
    }
    if let Some((kind, p)) = first {
        for (at, msg) in panicked {
            let slot =
                tally
                    .contained
                    .entry(format!("{at}: {msg}"))
                    .or_insert((0, kind, p.clone()));
            slot.0 += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_updates_state_vectors_and_awareness_never_panic_a_task() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let inputs: usize = std::env::var("JARVIS_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let seed: u64 = std::env::var("JARVIS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x15b);
    let save = std::env::var("JARVIS_FUZZ_SAVE").is_ok();
    // Inputs run at once; more hides the hub's thread hand-offs on a long run.
    let jobs: usize = std::env::var("JARVIS_FUZZ_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1);
    panics();
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut hub = new_hub();
    let mut poisoned = 0;
    let mut generation = 0;
    let mut i = 0;
    while i < inputs {
        if i / 100_000 > (i.saturating_sub(jobs)) / 100_000 {
            eprintln!("fuzz: {i} inputs, {:.1?}", started.elapsed());
        }
        // A fresh hub every 1,000 inputs keeps memory flat over long runs.
        if i / 1000 != generation {
            generation = i / 1000;
            assert_serves(&hub, "check/doc").await;
            poisoned += hub
                .metrics()
                .documents_poisoned
                .load(std::sync::atomic::Ordering::Relaxed);
            hub.shutdown().await;
            hub = new_hub();
        }
        let batch: Vec<(String, bool, Kind, Vec<u8>)> = (i..(i + jobs).min(inputs))
            .map(|n| {
                let (kind, payload) = mutate(&mut rng);
                let ro = rng.below(8) == 0;
                (format!("f/{n}"), ro, kind, payload)
            })
            .collect();
        i += batch.len();
        run_batch(&hub, &mut tally, batch).await;
        if !tally.escaped.is_empty() {
            break;
        }
    }
    assert_serves(&hub, "check/doc").await;
    poisoned += hub
        .metrics()
        .documents_poisoned
        .load(std::sync::atomic::Ordering::Relaxed);
    if save {
        std::fs::create_dir_all(crashers_dir()).unwrap();
        for (site, (_, kind, p)) in &tally.contained {
            let mut bytes = vec![*kind as u8];
            bytes.extend_from_slice(p);
            let name = format!("{}.bin", &blake3::hash(&bytes).to_hex()[..16]);
            std::fs::write(crashers_dir().join(&name), &bytes).unwrap();
            eprintln!("saved {name} for {site}");
        }
    }
    eprintln!(
        "fuzz: {inputs} inputs, seed {seed}, {:.1?}: {} accepted, closes {:?}, {poisoned} documents \
         reloaded after a failed update, {} panic sites contained:",
        started.elapsed(),
        tally.accepted,
        tally.closes,
        tally.contained.len()
    );
    for (site, (n, kind, _)) in &tally.contained {
        eprintln!("  {n:>6} × {kind:?} {site}");
    }
    eprintln!("close reasons:");
    for (reason, n) in &tally.reasons {
        eprintln!("  {n:>6} × {reason}");
    }
    assert!(
        tally.escaped.is_empty(),
        "a task panicked: {:?}",
        tally.escaped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_crashers_never_panic_a_task() {
    let _turn = ONE_AT_A_TIME.lock().await;
    panics();
    let mut files: Vec<PathBuf> = std::fs::read_dir(crashers_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no crashers in {}",
        crashers_dir().display()
    );
    let hub = new_hub();
    let mut tally = Tally::default();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).unwrap();
        let kind = Kind::from_byte(bytes[0]).unwrap();
        let input = (format!("c/{i}"), false, kind, bytes[1..].to_vec());
        run_batch(&hub, &mut tally, vec![input]).await;
        assert!(
            tally.escaped.is_empty(),
            "{} panicked a task: {:?}",
            f.display(),
            tally.escaped
        );
    }
    assert_serves(&hub, "check/doc").await;
}

/// The fuzz's seeds are valid: unmutated, every one is accepted (so the hub's checks refuse
/// hostile input, not Yjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmutated_inputs_are_accepted() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let hub = new_hub();
    for (i, (kind, payload)) in corpus().inputs.iter().enumerate() {
        let outcome = run_one(hub.clone(), format!("v/{i}"), false, *kind, payload.clone()).await;
        assert!(
            matches!(outcome, Outcome::Accepted),
            "seed {i} ({kind:?}) refused: {outcome:?}"
        );
    }
}

/// The base every input meets is kept as a file too, for the end-to-end replay of the crashers
/// against the real binary (`tests/tests/peer_safety.rs`); this keeps the two from drifting.
#[test]
fn the_base_fixture_is_the_corpus_base() {
    let path = crashers_dir().join("base.update");
    if std::env::var("JARVIS_FUZZ_SAVE").is_ok() {
        std::fs::write(&path, &corpus().base).unwrap();
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        corpus().base,
        "{} is stale: run with JARVIS_FUZZ_SAVE=1",
        path.display()
    );
}
