//! The 2-link planar arm: forward and inverse kinematics, the velocity-limited integrator the
//! simulator runs, and the proportional controller the expert uses (the same integrator, so
//! the expert's plan is exactly what the simulator does with it).

use serde::{Deserialize, Serialize};

/// Arm geometry and control gains; the `[arm]` table of a task config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArmConfig {
    /// Link lengths `[l1, l2]`, metres (base at the table origin).
    pub link_lengths: [f64; 2],
    /// Drawn link width, metres.
    pub link_width: f64,
    /// End-effector position of the rest pose held before the go phase, metres.
    pub rest_xy: [f64; 2],
    /// Proportional gain of the expert's joint controller, 1/s.
    pub kp: f64,
    /// Joint speed limit (both joints), rad/s; commands are clamped to it.
    pub max_joint_speed: f64,
}

impl Default for ArmConfig {
    fn default() -> Self {
        Self {
            link_lengths: [0.3, 0.3],
            link_width: 0.03,
            rest_xy: [0.3, 0.0],
            kp: 3.0,
            max_joint_speed: 1.5,
        }
    }
}

/// Joint limit of the elbow (rad): the integrator clamps `|q2|` to it.
pub(crate) const ELBOW_LIMIT: f64 = 3.0;

/// Arm state: joint angles (rad) and the joint velocities applied during the last step (rad/s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArmState {
    /// Joint angles `[shoulder, elbow]`, rad; shoulder 0 points along the table's +x.
    pub q: [f64; 2],
    /// Joint velocities applied over the last control period, rad/s.
    pub dq: [f64; 2],
}

impl ArmConfig {
    /// Elbow position in the table plane.
    pub fn elbow(&self, q: [f64; 2]) -> [f64; 2] {
        let l1 = self.link_lengths[0];
        [l1 * q[0].cos(), l1 * q[0].sin()]
    }

    /// End-effector position in the table plane (forward kinematics).
    pub fn forward(&self, q: [f64; 2]) -> [f64; 2] {
        let [l1, l2] = self.link_lengths;
        let a = q[0] + q[1];
        [
            l1 * q[0].cos() + l2 * a.cos(),
            l1 * q[0].sin() + l2 * a.sin(),
        ]
    }

    /// Inverse kinematics, elbow branch `q2 >= 0`; `None` when `xy` is out of reach
    /// (`|l1 - l2| <= |xy| <= l1 + l2` is required).
    pub fn inverse(&self, xy: [f64; 2]) -> Option<[f64; 2]> {
        let [l1, l2] = self.link_lengths;
        let r2 = xy[0] * xy[0] + xy[1] * xy[1];
        let c2 = (r2 - l1 * l1 - l2 * l2) / (2.0 * l1 * l2);
        if !(c2.is_finite() && (-1.0..=1.0).contains(&c2)) {
            return None;
        }
        let q2 = c2.acos();
        let q1 = xy[1].atan2(xy[0]) - (l2 * q2.sin()).atan2(l1 + l2 * q2.cos());
        Some([q1, q2])
    }

    /// One control period: the command clamped to the speed limit, integrated (explicit Euler)
    /// over `dt`, the elbow clamped to its limit. Non-finite commands are the caller's to reject.
    pub fn integrate(&self, s: &ArmState, cmd: [f64; 2], dt: f64) -> ArmState {
        let v = self.max_joint_speed;
        let dq = [cmd[0].clamp(-v, v), cmd[1].clamp(-v, v)];
        let q = [
            s.q[0] + dt * dq[0],
            (s.q[1] + dt * dq[1]).clamp(-ELBOW_LIMIT, ELBOW_LIMIT),
        ];
        ArmState { q, dq }
    }

    /// The expert's command toward joint goal `goal`: `kp (goal - q)`, clamped to the limit.
    pub fn control(&self, s: &ArmState, goal: [f64; 2]) -> [f64; 2] {
        let v = self.max_joint_speed;
        [
            (self.kp * (goal[0] - s.q[0])).clamp(-v, v),
            (self.kp * (goal[1] - s.q[1])).clamp(-v, v),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IK then FK returns the point (tolerance 1e-12 m, f64 rounding) over the reachable
    /// annulus; out-of-reach points are `None`.
    #[test]
    fn inverse_inverts_forward() {
        let arm = ArmConfig::default();
        for i in 0..50 {
            let a = -2.5 + 5.0 * f64::from(i) / 49.0;
            for r in [0.05, 0.2, 0.42, 0.59] {
                let xy = [r * a.cos(), r * a.sin()];
                let q = arm.inverse(xy).unwrap();
                let back = arm.forward(q);
                assert!(
                    (back[0] - xy[0]).hypot(back[1] - xy[1]) < 1e-12,
                    "{xy:?} {back:?}"
                );
                assert!(q[1] >= 0.0);
            }
        }
        assert!(arm.inverse([0.61, 0.0]).is_none());
    }

    #[test]
    fn integrate_clamps_speed() {
        let arm = ArmConfig::default();
        let s = ArmState {
            q: [0.0, 1.0],
            dq: [0.0; 2],
        };
        let n = arm.integrate(&s, [10.0, -10.0], 0.1);
        assert_eq!(n.dq, [1.5, -1.5]);
        assert!((n.q[0] - 0.15).abs() < 1e-12 && (n.q[1] - 0.85).abs() < 1e-12);
    }
}
