//! Codec micro-benchmark (issue 18 item 7, docs/design.md "Codecs: ours or a crate"): our
//! hand-written CBOR and MessagePack codecs, MQTT packet codec and WebSocket frame codec against
//! ciborium, rmp-serde, rumqttc's mqttbytes and tungstenite, on the same inputs. For each:
//! throughput (ns per message, MB/s) and heap allocations per message, counted by a global
//! allocator wrapper. Run: `cargo bench --bench codecs` (a release build; `-- --quick` for a
//! short run). Each case runs for a bounded time; nothing here touches the network.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidepool::protocol::mqtt::{self, Level, Packet};
use tidepool::protocol::ws::frame as ws;
use tidepool::value;

/// Counts allocations (and reallocations) of the whole process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One measured case: ns per message, MB/s over `bytes` per message, allocations per message.
struct Measured {
    ns: f64,
    mb_s: f64,
    allocs: f64,
}

/// Runs `f` (one message) repeatedly for about `budget`, at least 1,000 times.
fn measure(bytes: usize, budget: Duration, mut f: impl FnMut()) -> Measured {
    for _ in 0..100 {
        f(); // warm caches and buffers
    }
    let mut runs = 0u64;
    let allocs_before = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    while runs < 1_000 || start.elapsed() < budget {
        for _ in 0..100 {
            f();
        }
        runs += 100;
        if runs >= 50_000_000 {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - allocs_before;
    let per = elapsed / runs as f64;
    Measured {
        ns: per * 1e9,
        mb_s: bytes as f64 / per / 1e6,
        allocs: allocs as f64 / runs as f64,
    }
}

fn row(case: &str, ours: &Measured, theirs: &Measured, crate_name: &str) {
    println!(
        "| {case} | {:.0} ns, {:.0} MB/s, {:.1} allocs | {crate_name}: {:.0} ns, {:.0} MB/s, {:.1} allocs | {:.2}× |",
        ours.ns,
        ours.mb_s,
        ours.allocs,
        theirs.ns,
        theirs.mb_s,
        theirs.allocs,
        theirs.ns / ours.ns
    );
}

/// A record like the ones the REST and MQTT benches write: strings, numbers, a nested object
/// and an array.
fn record_json(i: u64) -> String {
    format!(
        r#"{{"id":"dog-{i}","name":"Rex {i}","breed":"Labrador Retriever","age":{},"weight":31.5,"vaccinated":true,"tags":["good","loud","hungry"],"owner":{{"name":"Ada Lovelace","city":"London","since":1843}},"notes":"Fetches the ball, ignores the frisbee, sleeps on the left side of the sofa."}}"#,
        i % 17
    )
}

fn value_codecs(budget: Duration) {
    let json = record_json(7);
    let ours = value::json::parse(json.as_bytes()).expect("record parses");
    let theirs: serde_json::Value = serde_json::from_str(&json).expect("record parses");
    let archived_bytes = value::to_archived_bytes(&ours);
    let archived = value::access(&archived_bytes).expect("archive reads");

    // CBOR
    let cbor = value::cbor::to_vec(&ours);
    let mut out = Vec::with_capacity(1024);
    let a = measure(cbor.len(), budget, || {
        out.clear();
        value::cbor::write(black_box(&ours), &mut out);
        black_box(&out);
    });
    let b = measure(cbor.len(), budget, || {
        out.clear();
        ciborium::into_writer(black_box(&theirs), &mut out).expect("encodes");
        black_box(&out);
    });
    row("CBOR encode, owned record", &a, &b, "ciborium");
    let a = measure(cbor.len(), budget, || {
        out.clear();
        value::cbor::write(black_box(archived), &mut out);
        black_box(&out);
    });
    let b = measure(cbor.len(), budget, || {
        out.clear();
        // The crate encodes owned serde values only: the stored record is copied out first.
        black_box(value::deserialize(black_box(archived)).expect("archive reads"));
        ciborium::into_writer(&theirs, &mut out).expect("encodes");
        black_box(&out);
    });
    row(
        "CBOR encode, stored record (ours in place; crate needs an owned copy)",
        &a,
        &b,
        "deserialize + ciborium",
    );
    let a = measure(cbor.len(), budget, || {
        black_box(value::cbor::parse(black_box(&cbor)).expect("decodes"));
    });
    let b = measure(cbor.len(), budget, || {
        let v: ciborium::Value = ciborium::from_reader(black_box(&cbor[..])).expect("decodes");
        black_box(v);
    });
    row("CBOR decode", &a, &b, "ciborium");

    // MessagePack
    let msgpack = value::msgpack::to_vec(&ours);
    let a = measure(msgpack.len(), budget, || {
        out.clear();
        value::msgpack::write(black_box(&ours), &mut out);
        black_box(&out);
    });
    let b = measure(msgpack.len(), budget, || {
        out.clear();
        rmp_serde::encode::write_named(&mut out, black_box(&theirs)).expect("encodes");
        black_box(&out);
    });
    row("MessagePack encode, owned record", &a, &b, "rmp-serde");
    let a = measure(msgpack.len(), budget, || {
        out.clear();
        value::msgpack::write(black_box(archived), &mut out);
        black_box(&out);
    });
    let b = measure(msgpack.len(), budget, || {
        out.clear();
        black_box(value::deserialize(black_box(archived)).expect("archive reads"));
        rmp_serde::encode::write_named(&mut out, &theirs).expect("encodes");
        black_box(&out);
    });
    row(
        "MessagePack encode, stored record (ours in place; crate needs an owned copy)",
        &a,
        &b,
        "deserialize + rmp-serde",
    );
    let a = measure(msgpack.len(), budget, || {
        black_box(value::msgpack::parse(black_box(&msgpack)).expect("decodes"));
    });
    let b = measure(msgpack.len(), budget, || {
        let v: serde_json::Value = rmp_serde::from_slice(black_box(&msgpack)).expect("decodes");
        black_box(v);
    });
    row("MessagePack decode", &a, &b, "rmp-serde");
}

fn mqtt_codec(budget: Duration) {
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5 as theirs;
    use rumqttc::v5::mqttbytes::QoS;
    let payload = record_json(7).into_bytes();
    let ours = Packet::Publish(mqtt::codec::Publish {
        dup: false,
        qos: 1,
        retain: false,
        topic: "dog/dog-7".into(),
        packet_id: 42,
        properties: mqtt::Properties::default(),
        payload: payload.clone(),
    });
    let mut theirs_publish = theirs::Publish::new("dog/dog-7", QoS::AtLeastOnce, payload, None);
    theirs_publish.pkid = 42;
    let theirs_packet = theirs::Packet::Publish(theirs_publish);
    let mut wire = Vec::new();
    mqtt::encode(&ours, Level::V5, &mut wire);
    let mut out = Vec::with_capacity(1024);
    let a = measure(wire.len(), budget, || {
        out.clear();
        mqtt::encode(black_box(&ours), Level::V5, &mut out);
        black_box(&out);
    });
    let mut buf = BytesMut::with_capacity(1024);
    let b = measure(wire.len(), budget, || {
        buf.clear();
        theirs_packet.write(&mut buf, None).expect("encodes");
        black_box(&buf);
    });
    row("MQTT 5 PUBLISH encode", &a, &b, "rumqttc mqttbytes v5");
    let a = measure(wire.len(), budget, || {
        let len = mqtt::check(black_box(&wire), 1 << 20)
            .expect("checks")
            .expect("whole");
        black_box(mqtt::decode(&wire[..len], Level::V5).expect("decodes"));
    });
    let b = measure(wire.len(), budget, || {
        let mut stream = BytesMut::from(black_box(&wire[..]));
        black_box(theirs::Packet::read(&mut stream, Some(1 << 20)).expect("decodes"));
    });
    row(
        "MQTT 5 PUBLISH check + decode",
        &a,
        &b,
        "rumqttc mqttbytes v5",
    );
}

fn ws_codec(budget: Duration) {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::{Frame, FrameSocket};
    let payload = record_json(7).into_bytes();
    let mut out = Vec::with_capacity(1024);
    ws::encode(ws::Opcode::Text, &payload, &mut out);
    let frame_len = out.len();
    let a = measure(frame_len, budget, || {
        out.clear();
        ws::encode(ws::Opcode::Text, black_box(&payload), &mut out);
        black_box(&out);
    });
    let b = measure(frame_len, budget, || {
        out.clear();
        let frame = Frame::message(black_box(payload.clone()), OpCode::Data(Data::Text), true);
        frame.format(&mut out).expect("encodes");
        black_box(&out);
    });
    row(
        "WebSocket frame encode (server, unmasked)",
        &a,
        &b,
        "tungstenite",
    );
    // Client frames arrive masked; 64 of them in one buffer, decoded one after another.
    let mut masked = Vec::new();
    for _ in 0..64 {
        ws::encode_masked(ws::Opcode::Text, &payload, [1, 2, 3, 4], &mut masked);
    }
    let mut scratch = masked.clone();
    let a = measure(masked.len(), budget, || {
        scratch.copy_from_slice(&masked);
        let mut at = 0;
        while let Ok(Some((frame, used))) = ws::decode(&mut scratch[at..]) {
            black_box(frame.payload);
            at += used;
        }
    });
    let b = measure(masked.len(), budget, || {
        let mut socket = FrameSocket::new(Cursor::new(black_box(&masked[..])));
        while let Ok(Some(frame)) = socket.read(Some(1 << 20)) {
            black_box(frame.payload());
        }
    });
    row(
        "WebSocket 64 masked client frames decode (per 64)",
        &a,
        &b,
        "tungstenite FrameSocket",
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 50 } else { 500 });
    println!("| case | tidepool | crate | crate time / ours |");
    println!("| --- | --- | --- | --- |");
    value_codecs(budget);
    mqtt_codec(budget);
    ws_codec(budget);
}
