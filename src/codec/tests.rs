use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::message::QoS;

const MAX: usize = 268_435_455 + 5;

fn round_trip(p: Packet) {
    let mut buf = BytesMut::new();
    encode(&p, &mut buf);
    let bytes = buf.clone();
    let decoded = decode(&mut buf, MAX).expect("decodes").expect("complete");
    assert_eq!(decoded, p);
    assert!(buf.is_empty(), "frame fully consumed");
    // Every strict prefix is incomplete, never an error and never consumed.
    for cut in 0..bytes.len() {
        let mut part = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            decode(&mut part, MAX),
            Ok(None),
            "prefix {cut} of {}",
            p.name()
        );
        assert_eq!(part.len(), cut);
    }
}

fn all_packets() -> Vec<Packet> {
    vec![
        Packet::Connect(Box::new(Connect {
            protocol: Protocol::V311,
            bridge: false,
            clean_session: true,
            keep_alive: 60,
            client_id: "client-1".into(),
            will: Some(LastWill {
                topic: Bytes::from_static(b"will/t"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"\x00\xffpw")),
        })),
        Packet::Connect(Box::new(Connect {
            protocol: Protocol::V31,
            bridge: true,
            clean_session: false,
            keep_alive: 0,
            client_id: String::new(),
            will: None,
            username: None,
            password: None,
        })),
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ConnectReturnCode::Accepted,
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ConnectReturnCode::NotAuthorized,
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: Bytes::from_static(b"a/b"),
            pkid: None,
            payload: Bytes::from_static(b"hello"),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: Bytes::from_static("ü/\u{FEFF}".as_bytes()),
            pkid: Some(65535),
            payload: Bytes::new(),
        }),
        Packet::PubAck(1),
        Packet::PubRec(2),
        Packet::PubRel(3),
        Packet::PubComp(4),
        Packet::Subscribe(Subscribe {
            pkid: 0x1234,
            filters: vec![
                ("a/+".into(), QoS::AtMostOnce),
                ("#".into(), QoS::ExactlyOnce),
            ],
        }),
        Packet::SubAck(SubAck {
            pkid: 7,
            codes: vec![SubAckCode::Granted(QoS::AtLeastOnce), SubAckCode::Failure],
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 9,
            filters: vec!["a/+".into(), "b".into()],
        }),
        Packet::UnsubAck(10),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect,
    ]
}

#[test]
fn every_packet_round_trips_and_prefixes_are_incomplete() {
    // [MQTT-3.1.3-1], [MQTT-3.1.2-9], [MQTT-3.1.2-18], [MQTT-3.1.2-20]: CONNECT fields by flag.
    for p in all_packets() {
        round_trip(p);
    }
}

#[test]
fn encoder_sets_the_fixed_reserved_flags() {
    // [MQTT-2.2.2-1], [MQTT-3.9.3-2]
    for (p, first) in [
        (Packet::PubRel(1), 0x62u8),
        (Packet::PubAck(1), 0x40),
        (Packet::PubRec(1), 0x50),
        (Packet::PubComp(1), 0x70),
        (Packet::UnsubAck(1), 0xb0),
        (Packet::PingResp, 0xd0),
        (
            Packet::SubAck(SubAck {
                pkid: 1,
                codes: vec![SubAckCode::Failure],
            }),
            0x90,
        ),
    ] {
        let mut buf = BytesMut::new();
        encode(&p, &mut buf);
        assert_eq!(buf[0], first, "{}", p.name());
    }
}

#[test]
fn longest_topic_name_round_trips() {
    // [MQTT-4.7.3-3]: 65535 bytes is the most a length prefix can say.
    let topic = vec![b'a'; 65_535];
    let mut buf = BytesMut::new();
    encode_publish(&topic, b"x", QoS::AtMostOnce, None, false, false, &mut buf);
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
        panic!("decodes")
    };
    assert_eq!(p.topic.len(), 65_535);
}

#[test]
fn two_frames_in_one_buffer_decode_in_order() {
    let mut buf = BytesMut::new();
    encode(&Packet::PingReq, &mut buf);
    encode(&Packet::PubAck(5), &mut buf);
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PubAck(5))));
    assert_eq!(decode(&mut buf, MAX), Ok(None));
}

#[test]
fn remaining_length_boundaries() {
    for (len, header) in [
        (0usize, 2usize),
        (127, 2),
        (128, 3),
        (16_383, 3),
        (16_384, 4),
        (2_097_151, 4),
        (2_097_152, 5),
        (268_435_455, 5),
    ] {
        assert_eq!(encoded_len(len), header + len);
        // A PUBLISH QoS 0 with topic "t" (3 bytes) and the rest payload.
        if len >= 3 {
            let payload = vec![b'x'; len - 3];
            let mut buf = BytesMut::new();
            encode_publish(
                b"t",
                &payload,
                QoS::AtMostOnce,
                None,
                false,
                false,
                &mut buf,
            );
            assert_eq!(buf.len(), header + len, "length {len}");
            let Some(Packet::Publish(p)) = decode(&mut buf, MAX).expect("valid") else {
                panic!("not a publish at {len}");
            };
            assert_eq!(p.payload.len(), len - 3);
        } else {
            // PINGREQ with a zero remaining length.
            let mut buf = BytesMut::from(&[0xc0u8, 0][..]);
            assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingReq)));
        }
    }
}

#[test]
fn remaining_length_over_four_bytes_is_malformed() {
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
    assert_eq!(
        decode(&mut buf, MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    // Four continuation bytes are known to be bad before the fifth arrives.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x80][..]);
    assert_eq!(
        decode(&mut buf, MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    // Three continuation bytes may still be fine.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80][..]);
    assert_eq!(decode(&mut buf, MAX), Ok(None));
}

#[test]
fn oversized_frame_is_refused_before_its_body_arrives() {
    // A 256 MB claim with no body: refused from the header alone.
    let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
    assert!(matches!(
        decode(&mut buf, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        })
    ));
    let mut buf = BytesMut::new();
    encode_publish(
        b"t",
        &[0; 100],
        QoS::AtMostOnce,
        None,
        false,
        false,
        &mut buf,
    );
    let len = buf.len();
    assert!(decode(&mut buf.clone(), len).is_ok_and(|p| p.is_some()));
    assert!(matches!(
        decode(&mut buf, len - 1),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn wrong_reserved_flags_are_rejected() {
    // [MQTT-2.2.2-2], [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1], [MQTT-3.14.1-1]
    let cases: &[&[u8]] = &[
        &[0x41, 2, 0, 1],          // PUBACK flags 1
        &[0x60, 2, 0, 1],          // PUBREL flags 0
        &[0x80, 5, 0, 1, 0, 0, 0], // SUBSCRIBE flags 0
        &[0xa0, 3, 0, 1, 0],       // UNSUBSCRIBE flags 0
        &[0xc1, 0],                // PINGREQ
        &[0xe1, 0],                // DISCONNECT
        &[0x12, 0],                // CONNECT
    ];
    for bytes in cases {
        let mut buf = BytesMut::from(*bytes);
        assert!(
            matches!(decode(&mut buf, MAX), Err(DecodeError::InvalidFlags { .. })),
            "{bytes:02x?}"
        );
    }
    for t in [0u8, 0xf0] {
        let mut buf = BytesMut::from(&[t, 0][..]);
        assert!(matches!(
            decode(&mut buf, MAX),
            Err(DecodeError::InvalidPacketType(_))
        ));
    }
}

#[test]
fn publish_with_qos_3_is_rejected() {
    // [MQTT-3.3.1-4]
    let mut buf = BytesMut::from(&[0x36u8, 5, 0, 1, b't', 0, 1][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::InvalidQoS));
}

#[test]
fn invalid_utf8_and_nul_are_rejected() {
    // [MQTT-1.5.3-1] an encoded surrogate; [MQTT-1.5.3-2] U+0000.
    let mut buf = BytesMut::from(&[0x30u8, 5, 0, 3, 0xed, 0xa0, 0x80][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::BadUtf8));
    let mut buf = BytesMut::from(&[0x30u8, 4, 0, 2, b'a', 0][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::NullCharacter));
    let mut buf = BytesMut::from(&[0x82u8, 6, 0, 1, 0, 1, 0xff, 0][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::BadUtf8));
}

#[test]
fn bom_is_kept() {
    // [MQTT-1.5.3-3]
    let mut buf = BytesMut::new();
    encode_publish(
        "\u{FEFF}t".as_bytes(),
        b"",
        QoS::AtMostOnce,
        None,
        false,
        false,
        &mut buf,
    );
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
        panic!("decodes")
    };
    assert_eq!(&p.topic[..], "\u{FEFF}t".as_bytes());
}

fn connect_bytes(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u16(name.len() as u16);
    body.put_slice(name);
    body.put_u8(level);
    body.put_u8(flags);
    body.put_u16(30);
    body.put_slice(rest);
    let mut buf = BytesMut::new();
    buf.put_u8(0x10);
    buf.put_u8(body.len() as u8);
    buf.put_slice(&body);
    buf
}

#[test]
fn connect_protocol_name_and_level() {
    // [MQTT-3.1.2-1]
    let mut buf = connect_bytes(b"MQTX", 4, 2, &[0, 1, b'c']);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::InvalidProtocolName));
    // [MQTT-3.1.2-2]
    let mut buf = connect_bytes(b"MQTT", 5, 2, &[0, 1, b'c']);
    assert_eq!(
        decode(&mut buf, MAX),
        Err(DecodeError::UnsupportedProtocolLevel(5))
    );
    let mut buf = connect_bytes(b"MQIsdp", 4, 2, &[0, 1, b'c']);
    assert_eq!(
        decode(&mut buf, MAX),
        Err(DecodeError::UnsupportedProtocolLevel(4))
    );
    let mut buf = connect_bytes(b"MQIsdp", 3, 2, &[0, 1, b'c']);
    assert!(
        matches!(decode(&mut buf, MAX), Ok(Some(Packet::Connect(c))) if c.protocol == Protocol::V31)
    );
}

#[test]
fn connect_flag_rules() {
    // [MQTT-3.1.2-3] reserved bit
    for flags in [0x03u8, 0x08, 0x10, 0x20, 0x40] {
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15], [MQTT-3.1.2-22]
        let mut buf = connect_bytes(b"MQTT", 4, flags, &[0, 1, b'c', 0, 1, b'p']);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(DecodeError::InvalidConnectFlags(flags)),
            "flags {flags:#x}"
        );
    }
    // [MQTT-3.1.2-14] will QoS 3
    let mut buf = connect_bytes(b"MQTT", 4, 0x1e, &[0, 1, b'c', 0, 1, b't', 0, 0]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::InvalidQoS));
    // [MQTT-3.1.2-19], [MQTT-3.1.2-21], [MQTT-3.1.3-3] missing fields are malformed
    for (flags, rest) in [
        (0x82u8, &[0u8, 1, b'c'][..]),
        (0xc2, &[0, 1, b'c', 0, 1, b'u']),
        (0x06, &[0, 1, b'c', 0, 1, b't']),
        (0x02, &[]),
    ] {
        let mut buf = connect_bytes(b"MQTT", 4, flags, rest);
        assert!(
            matches!(decode(&mut buf, MAX), Err(DecodeError::Malformed(_))),
            "flags {flags:#x}"
        );
    }
}

#[test]
fn packet_id_zero_is_rejected() {
    // [MQTT-2.3.1-1]
    let cases: &[&[u8]] = &[
        &[0x32, 5, 0, 1, b't', 0, 0],
        &[0x82, 6, 0, 0, 0, 1, b'a', 0],
        &[0xa2, 5, 0, 0, 0, 1, b'a'],
        &[0x40, 2, 0, 0],
    ];
    for bytes in cases {
        let mut buf = BytesMut::from(*bytes);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(DecodeError::ZeroPacketId),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn subscribe_and_unsubscribe_need_filters() {
    // [MQTT-3.8.3-3], [MQTT-3.10.3-2]
    let mut buf = BytesMut::from(&[0x82u8, 2, 0, 1][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::NoTopicFilters));
    let mut buf = BytesMut::from(&[0xa2u8, 2, 0, 1][..]);
    assert_eq!(decode(&mut buf, MAX), Err(DecodeError::NoTopicFilters));
}

#[test]
fn subscribe_qos_3_and_reserved_bits_are_rejected() {
    // [MQTT-3.8.3-4]
    for q in [3u8, 0x04, 0x81] {
        let mut buf = BytesMut::from(&[0x82u8, 6, 0, 1, 0, 1, b'a', q][..]);
        assert_eq!(decode(&mut buf, MAX), Err(DecodeError::InvalidQoS));
    }
}

#[test]
fn short_and_long_bodies_are_malformed() {
    let cases: &[&[u8]] = &[
        &[0x40, 1, 0],          // PUBACK body too short
        &[0x40, 3, 0, 1, 0],    // PUBACK trailing byte
        &[0xc0, 1, 0],          // PINGREQ with a body
        &[0x30, 1, 0],          // PUBLISH topic length cut
        &[0x30, 3, 0, 5, b'a'], // topic longer than frame
    ];
    for bytes in cases {
        let mut buf = BytesMut::from(*bytes);
        assert!(
            matches!(decode(&mut buf, MAX), Err(DecodeError::Malformed(_))),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn decoded_payload_is_a_slice_of_the_frame() {
    let mut buf = BytesMut::new();
    encode_publish(
        b"a/b",
        &[7u8; 64],
        QoS::AtLeastOnce,
        Some(3),
        false,
        false,
        &mut buf,
    );
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, MAX) else {
        panic!("decodes")
    };
    let at = p.payload.as_ptr() as usize;
    assert!(
        at > start && at < end,
        "payload points into the read buffer"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random bytes never panic the decoder, and a decoder error or `Ok(None)` never
        /// consumes input it did not decode.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut left = buf.len();
            while let Ok(Some(_)) = decode(&mut buf, 4096) {
                prop_assert!(buf.len() < left);
                left = buf.len();
            }
        }

        /// Valid frames with one byte changed, cut short, or extended never panic either.
        #[test]
        fn mutated_frames_never_panic(
            which in 0usize..17,
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
            cut in any::<prop::sample::Index>(),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let packets = all_packets();
            let mut frame = BytesMut::new();
            encode(&packets[which % packets.len()], &mut frame);
            let i = at.index(frame.len());
            frame[i] = value;
            let keep = cut.index(frame.len() + 1);
            let mut buf = BytesMut::from(&frame[..keep]);
            buf.extend_from_slice(&tail);
            while let Ok(Some(_)) = decode(&mut buf, MAX) {}
        }
    }
}

/// The encoded size of a packet with this remaining length: the test's own oracle.
fn encoded_len(remaining: usize) -> usize {
    let header = match remaining {
        0..=127 => 2,
        128..=16_383 => 3,
        16_384..=2_097_151 => 4,
        _ => 5,
    };
    header + remaining
}

#[test]
fn a_bridge_sets_the_protocol_levels_top_bit() {
    for (protocol, name, level) in [
        (Protocol::V311, &b"MQTT"[..], 0x84),
        (Protocol::V31, b"MQIsdp", 0x83),
    ] {
        let mut buf = BytesMut::new();
        let c = Connect {
            protocol,
            bridge: true,
            clean_session: true,
            keep_alive: 0,
            client_id: "b".into(),
            will: None,
            username: None,
            password: None,
        };
        encode(&Packet::Connect(Box::new(c.clone())), &mut buf);
        // Fixed header (2), name length (2), name, then the level.
        assert_eq!(&buf[4..4 + name.len()], name);
        assert_eq!(buf[4 + name.len()], level);
        match decode(&mut buf, usize::MAX) {
            Ok(Some(Packet::Connect(back))) => assert_eq!(*back, c),
            other => panic!("{other:?}"),
        }
    }
    // Any other level is still refused, with or without the bit [MQTT-3.1.2-2].
    let mut buf = BytesMut::from(&b"\x10\x0c\x00\x04MQTT\x85\x02\x00\x00\x00\x00"[..]);
    assert!(decode(&mut buf, usize::MAX).is_err());
}
