//! A small min-cost flow solver (primal-dual: Dijkstra on reduced costs, then a blocking flow
//! over the edges of zero reduced cost), used to choose the "+1"s of a joint allocation.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

const INF: i64 = i64::MAX / 4;
const DEAD: u32 = u32::MAX;

/// A directed network with integer capacities and costs. Edge `e` and its residual twin
/// `e ^ 1` are stored side by side.
#[derive(Debug, Default)]
pub(crate) struct Network {
    nodes: usize,
    from: Vec<u32>,
    to: Vec<u32>,
    cap: Vec<i64>,
    cost: Vec<i64>,
}

impl Network {
    pub(crate) fn new(nodes: usize) -> Self {
        Self { nodes, ..Self::default() }
    }

    /// Adds an edge `u → v` and returns its index (its flow is read with [`Network::flow`]).
    pub(crate) fn add_edge(&mut self, u: usize, v: usize, cap: i64, cost: i64) -> usize {
        let index = self.to.len();
        self.from.extend([u as u32, v as u32]);
        self.to.extend([v as u32, u as u32]);
        self.cap.extend([cap, 0]);
        self.cost.extend([cost, -cost]);
        index
    }

    /// The flow on edge `edge`, as returned by [`Network::add_edge`].
    pub(crate) fn flow(&self, edge: usize) -> i64 {
        self.cap[edge ^ 1]
    }

    /// Sends up to `wanted` units from `source` to `sink` at the least total cost, starting
    /// from zero flow and `potential`, which must make every edge's reduced cost
    /// `cost + potential[u] − potential[v]` non-negative. When `potential` is exactly every
    /// node's distance from `source` (`exact`), the first shortest-path search is skipped.
    /// Returns the flow sent.
    pub(crate) fn min_cost_flow(
        &mut self,
        source: usize,
        sink: usize,
        wanted: i64,
        mut potential: Vec<i64>,
        exact: bool,
    ) -> i64 {
        let n = self.nodes;
        // Edges grouped by tail (compressed adjacency).
        let mut start = vec![0u32; n + 1];
        for &u in &self.from {
            start[u as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut adjacency = vec![0u32; self.from.len()];
        for (edge, &u) in self.from.iter().enumerate() {
            adjacency[fill[u as usize] as usize] = edge as u32;
            fill[u as usize] += 1;
        }

        let mut sent = 0;
        let mut dist = vec![INF; n];
        let mut level = vec![DEAD; n];
        let mut cursor = vec![0u32; n];
        let mut heap = BinaryHeap::new();
        let mut queue = Vec::with_capacity(n);
        let mut path: Vec<u32> = Vec::new();
        let mut first = exact;
        while sent < wanted {
            if std::mem::take(&mut first) {
                // The potentials are the distances already: every shortest path is admissible.
                dist.fill(0);
            } else {
                // Shortest distances on reduced costs.
                dist.fill(INF);
                dist[source] = 0;
                heap.push(Reverse((0i64, source as u32)));
                while let Some(Reverse((d, u))) = heap.pop() {
                    let u = u as usize;
                    if d > dist[u] {
                        continue;
                    }
                    for &edge in &adjacency[start[u] as usize..start[u + 1] as usize] {
                        let edge = edge as usize;
                        if self.cap[edge] <= 0 {
                            continue;
                        }
                        let v = self.to[edge] as usize;
                        let next = d + self.cost[edge] + potential[u] - potential[v];
                        if next < dist[v] {
                            dist[v] = next;
                            heap.push(Reverse((next, v as u32)));
                        }
                    }
                }
            }
            let reach = dist[sink];
            if reach >= INF {
                break;
            }
            for (p, &d) in potential.iter_mut().zip(&dist) {
                *p += d.min(reach);
            }
            // Blocking flows over the admissible edges (zero reduced cost) until none is left.
            loop {
                level.fill(DEAD);
                level[source] = 0;
                queue.clear();
                queue.push(source as u32);
                let mut head = 0;
                while head < queue.len() {
                    let u = queue[head] as usize;
                    head += 1;
                    for &edge in &adjacency[start[u] as usize..start[u + 1] as usize] {
                        let edge = edge as usize;
                        let v = self.to[edge] as usize;
                        if self.cap[edge] > 0
                            && level[v] == DEAD
                            && self.cost[edge] + potential[u] - potential[v] == 0
                        {
                            level[v] = level[u] + 1;
                            queue.push(v as u32);
                        }
                    }
                }
                if level[sink] == DEAD {
                    break;
                }
                cursor.copy_from_slice(&start[..n]);
                // Depth-first search for augmenting paths, without recursion.
                path.clear();
                let mut u = source;
                while sent < wanted {
                    if u == sink {
                        let mut push = wanted - sent;
                        for &edge in &path {
                            push = push.min(self.cap[edge as usize]);
                        }
                        let mut back_to = path.len();
                        for (i, &edge) in path.iter().enumerate() {
                            let edge = edge as usize;
                            self.cap[edge] -= push;
                            self.cap[edge ^ 1] += push;
                            if self.cap[edge] == 0 && back_to == path.len() {
                                back_to = i;
                            }
                        }
                        sent += push;
                        path.truncate(back_to);
                        u = path.last().map_or(source, |&edge| self.to[edge as usize] as usize);
                        continue;
                    }
                    let end = start[u + 1];
                    let mut advanced = false;
                    while cursor[u] < end {
                        let edge = adjacency[cursor[u] as usize] as usize;
                        let v = self.to[edge] as usize;
                        if self.cap[edge] > 0
                            && level[v] != DEAD
                            && level[v] == level[u] + 1
                            && self.cost[edge] + potential[u] - potential[v] == 0
                        {
                            path.push(edge as u32);
                            u = v;
                            advanced = true;
                            break;
                        }
                        cursor[u] += 1;
                    }
                    if !advanced {
                        // A dead end: no path to the sink through `u` in this level graph.
                        level[u] = DEAD;
                        match path.pop() {
                            Some(edge) => {
                                u = self.from[edge as usize] as usize;
                                cursor[u] += 1;
                            }
                            None => break,
                        }
                    }
                }
                if sent >= wanted {
                    break;
                }
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::Network;

    #[test]
    fn picks_the_cheaper_route() {
        // 0 → 1 → 3 costs 1, 0 → 2 → 3 costs 5; capacity 1 each except 0 → 1 of 2.
        let mut network = Network::new(4);
        let a = network.add_edge(0, 1, 2, 0);
        let b = network.add_edge(1, 3, 1, 1);
        let c = network.add_edge(0, 2, 2, 0);
        let d = network.add_edge(2, 3, 2, 5);
        assert_eq!(network.min_cost_flow(0, 3, 2, vec![0; 4], false), 2);
        assert_eq!((network.flow(a), network.flow(b), network.flow(c), network.flow(d)), (1, 1, 1, 1));
    }
}
