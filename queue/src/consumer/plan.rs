//! Planning a claim across partitions: which partition serves each turn of the policy.

/// Assigns each turn (its first queue, as a position in `order`) to a partition: the turn
/// takes the first queue in its preference (its first, then `order`) that holds a ready task
/// anywhere, and of that queue the oldest head across the partitions. `heads[p][q]` are the
/// queue times of partition p's first ready tasks of configured queue q, oldest first.
/// Returns, per partition, the turns it got as (turn number, first-queue position), in turn
/// order; turns stop once every queue is empty.
pub(super) fn plan_turns(
    heads: Vec<Vec<Vec<f64>>>,
    order: &[usize],
    firsts: &[usize],
) -> Vec<Vec<(usize, usize)>> {
    let n = heads.len();
    // How many of each partition's heads of each queue are taken by earlier turns.
    let mut taken: Vec<Vec<usize>> = heads.iter().map(|h| vec![0; h.len()]).collect();
    let mut plan = vec![Vec::new(); n];
    for (turn, &first) in firsts.iter().enumerate() {
        let pick = std::iter::once(first)
            .chain((0..order.len()).filter(|&i| i != first))
            .find_map(|pos| {
                let q = order[pos];
                (0..n)
                    .filter_map(|p| heads[p][q].get(taken[p][q]).map(|&t| (t, p)))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, p)| (pos, p))
            });
        let Some((pos, p)) = pick else { break };
        taken[p][order[pos]] += 1;
        plan[p].push((turn, pos));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::plan_turns;

    #[test]
    fn turns_follow_the_policy_across_partitions() {
        // Two partitions, queues 0 (high) and 1 (low); strict order, three turns.
        let heads = vec![
            vec![vec![], vec![1.0, 2.0, 3.0]],
            vec![vec![5.0, 6.0], vec![]],
        ];
        let plan = plan_turns(heads, &[0, 1], &[0, 0, 0]);
        // Both high-priority tasks (partition 1) before any low one (partition 0).
        assert_eq!(plan, vec![vec![(2, 1)], vec![(0, 0), (1, 0)]]);
    }

    #[test]
    fn the_oldest_head_goes_first_whatever_its_partition() {
        let heads = vec![vec![vec![2.0, 5.0]], vec![vec![1.0, 3.0]], vec![vec![4.0]]];
        let plan = plan_turns(heads, &[0], &[0, 0, 0, 0]);
        // Times 1 (p1), 2 (p0), 3 (p1), 4 (p2).
        assert_eq!(plan, vec![vec![(1, 0)], vec![(0, 0), (2, 0)], vec![(3, 0)]]);
    }

    #[test]
    fn planning_stops_when_every_queue_is_empty() {
        let heads = vec![vec![vec![], vec![7.0]], vec![vec![], vec![]]];
        let plan = plan_turns(heads, &[0, 1], &[0, 0, 0]);
        assert_eq!(plan, vec![vec![(0, 1)], vec![]]);
    }
}
