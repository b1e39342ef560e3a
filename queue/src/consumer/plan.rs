//! Planning a claim across partitions: which partition serves each turn of the policy.

use std::collections::HashMap;

/// One of a partition's next tasks of a queue, in the order its claims would take them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Head {
    /// Its queue time (sequence number).
    pub seq: f64,
    /// Its owner (`""` for none) and the owner's weight.
    pub owner: String,
    pub weight: f64,
}

/// Fair share across partitions, kept by a consumer from one plan to the next: the virtual
/// time of each owner that has tasks at the heads, moved on by 1 / its weight per task it is
/// given. An owner that appears starts at the lowest time of the others, so it gains nothing
/// by coming and going.
#[derive(Debug, Default)]
pub(super) struct Shares {
    time: HashMap<String, f64>,
}

impl Shares {
    fn start(&mut self, heads: &[Vec<Vec<Head>>]) {
        let present: std::collections::HashSet<&str> = heads
            .iter()
            .flatten()
            .flatten()
            .map(|h| h.owner.as_str())
            .collect();
        self.time
            .retain(|owner, _| present.contains(owner.as_str()));
        let floor = self.time.values().copied().reduce(f64::min).unwrap_or(0.0);
        for owner in present {
            self.time.entry(owner.to_string()).or_insert(floor);
        }
    }

    fn of(&self, owner: &str) -> f64 {
        self.time.get(owner).copied().unwrap_or(0.0)
    }

    fn served(&mut self, head: &Head) {
        *self.time.entry(head.owner.clone()).or_insert(0.0) += 1.0 / head.weight.max(1.0);
    }
}

/// Assigns each turn (its first queue, as a position in `order`) to a partition: the turn
/// takes the first queue in its preference (its first, then `order`) that holds a ready task
/// anywhere, and of that queue the head whose owner's turn it is (lowest virtual time in
/// `shares`), the oldest among equals, so one owner's tasks go oldest first whatever their
/// partition. `heads[p][q]` are partition p's next tasks of configured queue q in its own
/// claim order. Returns, per partition, the turns it got as (turn number, first-queue
/// position), in turn order; turns stop once every queue is empty.
pub(super) fn plan_turns(
    heads: Vec<Vec<Vec<Head>>>,
    order: &[usize],
    firsts: &[usize],
    shares: &mut Shares,
) -> Vec<Vec<(usize, usize)>> {
    let n = heads.len();
    shares.start(&heads);
    // How many of each partition's heads of each queue are taken by earlier turns.
    let mut taken: Vec<Vec<usize>> = heads.iter().map(|h| vec![0; h.len()]).collect();
    let mut plan = vec![Vec::new(); n];
    for (turn, &first) in firsts.iter().enumerate() {
        let pick = std::iter::once(first)
            .chain((0..order.len()).filter(|&i| i != first))
            .find_map(|pos| {
                let q = order[pos];
                (0..n)
                    .filter_map(|p| heads[p][q].get(taken[p][q]).map(|h| (h, p)))
                    .min_by(|a, b| {
                        shares
                            .of(&a.0.owner)
                            .total_cmp(&shares.of(&b.0.owner))
                            .then(a.0.seq.total_cmp(&b.0.seq))
                    })
                    .map(|(h, p)| (pos, p, h.clone()))
            });
        let Some((pos, p, head)) = pick else { break };
        shares.served(&head);
        taken[p][order[pos]] += 1;
        plan[p].push((turn, pos));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::{Head, Shares, plan_turns};

    fn h(seq: f64) -> Head {
        owned(seq, "")
    }

    fn owned(seq: f64, owner: &str) -> Head {
        Head {
            seq,
            owner: owner.to_string(),
            weight: 1.0,
        }
    }

    fn plan(
        heads: Vec<Vec<Vec<Head>>>,
        order: &[usize],
        firsts: &[usize],
    ) -> Vec<Vec<(usize, usize)>> {
        plan_turns(heads, order, firsts, &mut Shares::default())
    }

    #[test]
    fn turns_follow_the_policy_across_partitions() {
        // Two partitions, queues 0 (high) and 1 (low); strict order, three turns.
        let heads = vec![
            vec![vec![], vec![h(1.0), h(2.0), h(3.0)]],
            vec![vec![h(5.0), h(6.0)], vec![]],
        ];
        let plan = plan(heads, &[0, 1], &[0, 0, 0]);
        // Both high-priority tasks (partition 1) before any low one (partition 0).
        assert_eq!(plan, vec![vec![(2, 1)], vec![(0, 0), (1, 0)]]);
    }

    #[test]
    fn the_oldest_head_goes_first_whatever_its_partition() {
        let heads = vec![
            vec![vec![h(2.0), h(5.0)]],
            vec![vec![h(1.0), h(3.0)]],
            vec![vec![h(4.0)]],
        ];
        let plan = plan(heads, &[0], &[0, 0, 0, 0]);
        // Times 1 (p1), 2 (p0), 3 (p1), 4 (p2).
        assert_eq!(plan, vec![vec![(1, 0)], vec![(0, 0), (2, 0)], vec![(3, 0)]]);
    }

    #[test]
    fn planning_stops_when_every_queue_is_empty() {
        let heads = vec![vec![vec![], vec![h(7.0)]], vec![vec![], vec![]]];
        let plan = plan(heads, &[0, 1], &[0, 0, 0]);
        assert_eq!(plan, vec![vec![(0, 1)], vec![]]);
    }

    #[test]
    fn owners_take_turns_across_partitions_whatever_their_tasks_ages() {
        // Alice's old backlog in partitions 0 and 1, Bob's new tasks in partition 2.
        let heads = vec![
            vec![vec![owned(1.0, "alice"), owned(3.0, "alice")]],
            vec![vec![owned(2.0, "alice"), owned(4.0, "alice")]],
            vec![vec![owned(9.0, "bob"), owned(10.0, "bob")]],
        ];
        let plan = plan(heads, &[0], &[0, 0, 0, 0]);
        // alice (1), bob (9), alice (2), bob (10).
        assert_eq!(plan, vec![vec![(0, 0)], vec![(2, 0)], vec![(1, 0), (3, 0)]]);
    }

    #[test]
    fn weights_set_the_shares_and_shares_carry_over_between_plans() {
        let heavy = |seq| Head {
            weight: 3.0,
            ..owned(seq, "heavy")
        };
        let mut shares = Shares::default();
        let mut counts = [0, 0];
        for _ in 0..8 {
            let heads = vec![
                vec![vec![heavy(1.0), heavy(2.0)]],
                vec![vec![owned(0.5, "light"), owned(0.6, "light")]],
            ];
            let plan = plan_turns(heads, &[0], &[0], &mut shares);
            counts[0] += plan[0].len();
            counts[1] += plan[1].len();
        }
        // One turn per plan, kept fair over the eight plans: 3 to 1.
        assert_eq!(counts, [6, 2]);
    }
}
