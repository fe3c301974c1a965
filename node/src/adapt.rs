//! Wire messages to the model's inputs and the model's outputs to wire messages: a camera
//! message to an encoded frame for the vision pipeline, a joint state to the proprio vector, a
//! model action chunk to the `ActionChunk` message.

use transport::msg::{AnyMessage, JointState, Time};
use vision::{EncodedFrame, Encoding};

/// A camera message's frame and stamp (ns): a `CompressedImage` (PNG when its format says so,
/// else JPEG: the decoder then reports a payload that is neither) or a raw `Image`.
/// `Ok(None)` for a message that is no image.
///
/// # Errors
/// A raw image encoding `vision` does not decode (its name).
pub fn frame(message: AnyMessage) -> Result<Option<(u64, EncodedFrame)>, String> {
    Ok(Some(match message {
        AnyMessage::CompressedImage(img) => {
            let encoding = if img.is_png() {
                Encoding::Png
            } else {
                Encoding::Jpeg
            };
            (
                img.header.stamp.as_nanos(),
                EncodedFrame::compressed(encoding, img.data),
            )
        }
        AnyMessage::Image(img) => {
            let Ok(encoding) = img.encoding.parse::<Encoding>() else {
                return Err(img.encoding);
            };
            (
                img.header.stamp.as_nanos(),
                EncodedFrame {
                    encoding,
                    width: img.width,
                    height: img.height,
                    step: img.step,
                    data: img.data.into(),
                },
            )
        }
        _ => return Ok(None),
    }))
}

/// A joint state as the model's proprio vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Proprio {
    /// `dim` values.
    pub values: Vec<f32>,
    /// Configured names the message did not carry (their values are 0).
    pub missing: u64,
}

impl Proprio {
    /// Whether every value is finite (a NaN or infinity must not reach the model).
    pub fn is_finite(&self) -> bool {
        self.values.iter().all(|v| v.is_finite())
    }
}

/// The proprio vector of `joints`: the positions of the joints `names` lists, in that order (0
/// for a name the message lacks, counted), or, with no names, the positions as sent, cut or
/// zero-padded to `dim`.
pub fn proprio(joints: &JointState, names: &[String], dim: usize) -> Proprio {
    if names.is_empty() {
        let mut values: Vec<f32> = joints.position.iter().map(|&x| x as f32).collect();
        values.resize(dim, 0.0);
        return Proprio { values, missing: 0 };
    }
    let mut missing = 0;
    let values = names
        .iter()
        .map(|n| {
            match joints
                .name
                .iter()
                .position(|x| x == n)
                .and_then(|i| joints.position.get(i))
            {
                Some(&x) => x as f32,
                None => {
                    missing += 1;
                    0.0
                }
            }
        })
        .collect();
    Proprio { values, missing }
}

/// The wire message of the model's `action` chunk for the frame-step of tick `tick_ns`, the
/// node's `sequence`-th.
pub fn action_message(
    action: runtime::model::ActionChunk,
    tick_ns: u64,
    sequence: u64,
) -> transport::msg::ActionChunk {
    transport::msg::ActionChunk {
        stamp: Time::from_nanos(tick_ns),
        sequence,
        horizon: u32::try_from(action.horizon).unwrap_or(u32::MAX),
        dims: u32::try_from(action.action_dim).unwrap_or(u32::MAX),
        values: action.values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport::msg::{CompressedImage, Header, Image};

    fn header(ns: u64) -> Header {
        Header {
            stamp: Time::from_nanos(ns),
            frame_id: "cam".into(),
        }
    }

    /// Compressed frames are PNG or JPEG by their format string, raw frames keep their
    /// geometry, an unknown raw encoding is named, and other messages are no frame.
    #[test]
    fn camera_messages_become_frames() {
        let png = AnyMessage::CompressedImage(CompressedImage {
            header: header(5),
            format: "rgb8; png compressed".into(),
            data: vec![1, 2, 3],
        });
        let (stamp, f) = frame(png).expect("png").expect("a frame");
        assert_eq!((stamp, f.encoding), (5, Encoding::Png));
        let jpeg = AnyMessage::CompressedImage(CompressedImage {
            header: header(6),
            format: "jpeg".into(),
            data: vec![9],
        });
        assert_eq!(
            frame(jpeg).expect("jpeg").expect("a frame").1.encoding,
            Encoding::Jpeg
        );
        let raw = AnyMessage::Image(Image {
            header: header(7),
            height: 2,
            width: 3,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: 9,
            data: vec![0; 18],
        });
        let (stamp, f) = frame(raw).expect("raw").expect("a frame");
        assert_eq!((stamp, f.width, f.height, f.step), (7, 3, 2, 9));
        let odd = AnyMessage::Image(Image {
            header: header(8),
            height: 1,
            width: 1,
            encoding: "yuv422".into(),
            is_bigendian: 0,
            step: 2,
            data: vec![0; 2],
        });
        assert_eq!(frame(odd).unwrap_err(), "yuv422");
        let text = AnyMessage::String(transport::msg::StringMsg { data: "go".into() });
        assert!(frame(text).expect("not an image").is_none());
    }

    /// Named joints are picked in the config's order (a missing name is 0 and counted), no
    /// names take the positions as sent padded to the model's width, and a NaN is caught.
    #[test]
    fn joint_states_become_proprio() {
        let js = JointState {
            header: header(1),
            name: vec!["b".into(), "a".into()],
            position: vec![2.0, 1.0],
            velocity: vec![],
            effort: vec![],
        };
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let p = proprio(&js, &names, 3);
        assert_eq!(
            p,
            Proprio {
                values: vec![1.0, 2.0, 0.0],
                missing: 1
            }
        );
        assert!(p.is_finite());
        assert_eq!(proprio(&js, &[], 4).values, vec![2.0, 1.0, 0.0, 0.0]);
        let nan = JointState {
            position: vec![f64::NAN, 1.0],
            ..js
        };
        assert!(!proprio(&nan, &names, 3).is_finite());
    }

    /// The model's chunk goes out with the tick as its stamp and the sequence number.
    #[test]
    fn model_chunks_become_action_messages() {
        let chunk = runtime::model::ActionChunk {
            horizon: 2,
            action_dim: 2,
            values: vec![0.1, 0.2, 0.3, 0.4],
        };
        let msg = action_message(chunk, 1_500_000_000, 7);
        assert_eq!(msg.stamp, Time::from_nanos(1_500_000_000));
        assert_eq!((msg.sequence, msg.horizon, msg.dims), (7, 2, 2));
        assert_eq!(msg.values, vec![0.1, 0.2, 0.3, 0.4]);
    }
}
