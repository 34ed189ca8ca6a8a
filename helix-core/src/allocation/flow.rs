//! A small min-cost flow solver (primal-dual: Dijkstra on reduced costs, then a blocking flow
//! over the edges of zero reduced cost), used to choose the "+1"s of a joint allocation.

const INF: i64 = i64::MAX / 4;
const DEAD: u32 = u32::MAX;

/// A directed network with integer capacities and costs, its arcs stored grouped by the node
/// they leave: every node's number of edges is given up front, so each edge is written once,
/// straight to its place.
#[derive(Debug)]
pub(crate) struct Network {
    /// Where every node's arcs start in `arcs` (one more entry at the end).
    start: Vec<u32>,
    /// Where the next arc of every node goes while edges are added.
    fill: Vec<u32>,
    arcs: Vec<Arc>,
}

/// One direction of an edge in the residual network: an edge `u → v` is an arc of `u` towards
/// `v` with the edge's capacity, and an arc of `v` towards `u` (its twin) with capacity 0 and
/// the opposite cost.
#[derive(Debug, Clone, Copy)]
struct Arc {
    to: u32,
    twin: u32,
    cap: i64,
    cost: i64,
}

impl Network {
    /// A network whose node `u` has `degrees[u]` edges (as tail or head; a loop counts twice).
    pub(crate) fn with_degrees(degrees: &[u32]) -> Self {
        let mut start = Vec::with_capacity(degrees.len() + 1);
        let mut total = 0u32;
        start.push(0);
        for &degree in degrees {
            total += degree;
            start.push(total);
        }
        let fill = start[..degrees.len()].to_vec();
        let arcs = vec![Arc { to: 0, twin: 0, cap: 0, cost: 0 }; total as usize];
        Self { start, fill, arcs }
    }

    /// Adds an edge `u → v`. Every node's arcs are kept in the order their edges were added
    /// (an edge's arc at its tail and its twin at its head).
    pub(crate) fn add_edge(&mut self, u: usize, v: usize, cap: i64, cost: i64) {
        let a = self.fill[u];
        self.fill[u] += 1;
        let b = self.fill[v];
        self.fill[v] += 1;
        debug_assert!(a < self.start[u + 1] && b < self.start[v + 1], "more edges than the degree");
        self.arcs[a as usize] = Arc { to: v as u32, twin: b, cap, cost };
        self.arcs[b as usize] = Arc { to: u as u32, twin: a, cap: 0, cost: -cost };
    }

    /// The residual capacity of every arc of `u`, in the order their edges were added: for an
    /// edge leaving `u`, its capacity less its flow. Reading a node's arcs in a row is much
    /// cheaper than looking up its edges one by one where their twins lie.
    pub(crate) fn residuals(&self, u: usize) -> impl Iterator<Item = i64> + '_ {
        self.arcs[self.start[u] as usize..self.start[u + 1] as usize].iter().map(|arc| arc.cap)
    }

    /// Sends up to `wanted` units from `source` to `sink` at the least total cost, starting
    /// from zero flow and `potential`, which must make every edge's reduced cost
    /// `cost + potential[u] − potential[v]` non-negative. When `potential` is exactly every
    /// node's distance from `source` (`exact`), the first shortest-path search is skipped.
    /// Returns the flow sent.
    ///
    /// Every node's arcs are scanned in the order their edges were added, which fixes the
    /// flow chosen among equally cheap ones.
    pub(crate) fn min_cost_flow(
        &mut self,
        source: usize,
        sink: usize,
        wanted: i64,
        mut potential: Vec<i64>,
        exact: bool,
    ) -> i64 {
        debug_assert!(self.fill.iter().zip(&self.start[1..]).all(|(fill, end)| fill == end));
        send(&mut self.arcs, &self.start, source, sink, wanted, &mut potential, exact)
    }
}

/// The primal-dual loop of [`Network::min_cost_flow`] over arcs grouped by node.
fn send(
    arcs: &mut [Arc],
    start: &[u32],
    source: usize,
    sink: usize,
    wanted: i64,
    potential: &mut [i64],
    exact: bool,
) -> i64 {
    let n = start.len() - 1;
    let mut sent = 0;
    let mut dist = vec![INF; n];
    let mut level = vec![DEAD; n];
    let mut cursor = vec![0u32; n];
    let mut heap = RadixHeap::default();
    let mut queue = Vec::with_capacity(n);
    let mut path: Vec<u32> = Vec::new();
    let mut first = exact;
    // Every node's arcs into the sink, in order (arcs never change their ends): the twins of
    // the sink's own arcs, sorted, which groups them by node.
    let mut into_sink: Vec<u32> =
        arcs[start[sink] as usize..start[sink + 1] as usize].iter().map(|arc| arc.twin).collect();
    into_sink.sort_unstable();
    let mut into_sink_start = Vec::with_capacity(n + 1);
    let mut next = 0;
    for &first in start {
        while next < into_sink.len() && into_sink[next] < first {
            next += 1;
        }
        into_sink_start.push(next);
    }
    // Whether the last level search found no path: then it reached exactly the nodes at
    // distance 0, and left in `dist` every other node's least reduced cost from them.
    let mut searched = false;
    while sent < wanted {
        if std::mem::take(&mut first) {
            // The potentials are the distances already: every shortest path is admissible.
            dist.fill(0);
        } else {
            // Shortest distances on reduced costs. The search stops once the sink is settled:
            // every node not settled yet is at least as far, and its potential grows by the
            // sink's distance either way.
            heap.clear();
            if std::mem::take(&mut searched) {
                // Resume from the level search instead of scanning its nodes again.
                for &u in &queue {
                    dist[u as usize] = 0;
                }
                for (v, &d) in dist.iter().enumerate() {
                    if d > 0 && d < INF {
                        heap.push(d as u64, v as u32);
                    }
                }
            } else {
                dist.fill(INF);
                dist[source] = 0;
                heap.push(0, source as u32);
            }
            while let Some((d, u)) = heap.pop() {
                let (d, u) = (d as i64, u as usize);
                if d > dist[u] {
                    continue;
                }
                if u == sink {
                    break;
                }
                for arc in &arcs[start[u] as usize..start[u + 1] as usize] {
                    if arc.cap <= 0 {
                        continue;
                    }
                    let v = arc.to as usize;
                    let next = d + arc.cost + potential[u] - potential[v];
                    if next < dist[v] {
                        dist[v] = next;
                        heap.push(next as u64, v as u32);
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
        // Blocking flows over the admissible arcs (zero reduced cost) until none is left.
        loop {
            // Levels by breadth-first search, up to the sink's: a node the search has not
            // reached by then cannot lie on a shortest admissible path, so it stays dead.
            // Other nodes' least reduced cost from the reached ones is kept on the way, for
            // the shortest-path search that follows when the sink is not reached.
            level.fill(DEAD);
            level[source] = 0;
            dist.fill(INF);
            queue.clear();
            queue.push(source as u32);
            let mut head = 0;
            // Nodes other than the source not reached yet: once only the sink is left, a
            // node's arcs into the sink are the only ones that can change anything.
            let mut unreached = n - 1;
            'search: while head < queue.len() {
                let u = queue[head] as usize;
                head += 1;
                let (next, reduced) = (level[u] + 1, potential[u]);
                if unreached == 1 {
                    for &a in &into_sink[into_sink_start[u]..into_sink_start[u + 1]] {
                        let arc = &arcs[a as usize];
                        if arc.cap > 0 {
                            let cost = arc.cost + reduced - potential[sink];
                            if cost == 0 {
                                level[sink] = next;
                                break 'search;
                            } else if cost < dist[sink] {
                                dist[sink] = cost;
                            }
                        }
                    }
                    continue;
                }
                for arc in &arcs[start[u] as usize..start[u + 1] as usize] {
                    let v = arc.to as usize;
                    if arc.cap > 0 && level[v] == DEAD {
                        let cost = arc.cost + reduced - potential[v];
                        if cost == 0 {
                            level[v] = next;
                            unreached -= 1;
                            if v == sink {
                                break 'search;
                            }
                            queue.push(v as u32);
                        } else if cost < dist[v] {
                            dist[v] = cost;
                        }
                    }
                }
            }
            if level[sink] == DEAD {
                searched = true;
                break;
            }
            cursor.copy_from_slice(&start[..n]);
            // Depth-first search for augmenting paths, without recursion.
            path.clear();
            let mut u = source;
            // Neither changes while the level graph is searched (the sink is never a dead end).
            let (sink_level, sink_potential) = (level[sink], potential[sink]);
            while sent < wanted {
                // The first admissible arc from the cursor on (the level of `u`, on the path,
                // is never DEAD, so `next` is a real level).
                let (next, reduced) = (level[u] + 1, potential[u]);
                let end = start[u + 1] as usize;
                let from = cursor[u] as usize;
                if next == sink_level {
                    // Only the sink leads anywhere from its level (the level search stopped
                    // there, so no node has a higher one): only arcs into it need a look.
                    let found = into_sink[into_sink_start[u]..into_sink_start[u + 1]]
                        .iter()
                        .map(|&a| a as usize)
                        .find(|&a| a >= from && arcs[a].cap > 0 && arcs[a].cost + reduced == sink_potential);
                    if let Some(last) = found {
                        // A path to the sink: push along it at once. The amount is the least
                        // capacity on the path, and the search goes on from the tail of the
                        // first arc it fills (the first arc whose capacity is that amount).
                        cursor[u] = last as u32;
                        let mut push = wanted - sent;
                        let mut back_to = path.len() + 1;
                        for (i, &arc) in path.iter().enumerate() {
                            let cap = arcs[arc as usize].cap;
                            if cap < push {
                                push = cap;
                                back_to = i;
                            } else if cap == push && back_to > path.len() {
                                back_to = i;
                            }
                        }
                        let cap = arcs[last].cap;
                        if cap < push {
                            push = cap;
                            back_to = path.len();
                        } else if cap == push && back_to > path.len() {
                            back_to = path.len();
                        }
                        for &arc in &path {
                            let arc = arc as usize;
                            arcs[arc].cap -= push;
                            let twin = arcs[arc].twin as usize;
                            arcs[twin].cap += push;
                        }
                        arcs[last].cap -= push;
                        let twin = arcs[last].twin as usize;
                        arcs[twin].cap += push;
                        sent += push;
                        if back_to < path.len() {
                            path.truncate(back_to);
                            u = path.last().map_or(source, |&arc| arcs[arc as usize].to as usize);
                        }
                        continue;
                    }
                } else if let Some(offset) = arcs[from..end].iter().position(|arc| {
                    let v = arc.to as usize;
                    arc.cap > 0 && level[v] == next && arc.cost + reduced == potential[v]
                }) {
                    cursor[u] = (from + offset) as u32;
                    path.push(cursor[u]);
                    u = arcs[from + offset].to as usize;
                    continue;
                }
                {
                    cursor[u] = end as u32;
                    // A dead end: no path to the sink through `u` in this level graph.
                    level[u] = DEAD;
                    match path.pop() {
                        Some(arc) => {
                            let arc = &arcs[arc as usize];
                            u = arcs[arc.twin as usize].to as usize;
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

/// A monotone priority queue of non-negative integer keys (a radix heap): an entry waits in
/// the bucket of the highest bit where its key differs from the last key popped, so each one
/// is moved O(log key) times at most and nothing is compared twice. Dijkstra's keys never fall
/// below the last one popped, which is all it needs; entries of equal keys come out in any
/// order, which changes no distance.
struct RadixHeap {
    last: u64,
    buckets: [Vec<(u64, u32)>; 65],
}

impl Default for RadixHeap {
    fn default() -> Self {
        Self { last: 0, buckets: std::array::from_fn(|_| Vec::new()) }
    }
}

impl RadixHeap {
    fn bucket(&self, key: u64) -> usize {
        (u64::BITS - (key ^ self.last).leading_zeros()) as usize
    }

    fn clear(&mut self) {
        self.last = 0;
        for bucket in &mut self.buckets {
            bucket.clear();
        }
    }

    /// Adds `value` with `key`, which must be at least the last key popped.
    fn push(&mut self, key: u64, value: u32) {
        debug_assert!(key >= self.last);
        let bucket = self.bucket(key);
        self.buckets[bucket].push((key, value));
    }

    /// An entry of the smallest key.
    fn pop(&mut self) -> Option<(u64, u32)> {
        if self.buckets[0].is_empty() {
            let index = self.buckets.iter().position(|bucket| !bucket.is_empty())?;
            let mut moving = std::mem::take(&mut self.buckets[index]);
            self.last = moving.iter().map(|&(key, _)| key).min().unwrap_or(self.last);
            for (key, value) in moving.drain(..) {
                let bucket = self.bucket(key);
                self.buckets[bucket].push((key, value));
            }
            // Keep the emptied vector's room for later.
            self.buckets[index] = moving;
        }
        self.buckets[0].pop()
    }
}

#[cfg(test)]
mod tests {
    use super::Network;

    #[test]
    fn picks_the_cheaper_route() {
        // 0 → 1 → 3 costs 1, 0 → 2 → 3 costs 5; capacity 1 each except 0 → 1 of 2.
        let mut network = Network::with_degrees(&[2, 2, 2, 2]);
        network.add_edge(0, 1, 2, 0);
        network.add_edge(1, 3, 1, 1);
        network.add_edge(0, 2, 2, 0);
        network.add_edge(2, 3, 2, 5);
        assert_eq!(network.min_cost_flow(0, 3, 2, vec![0; 4], false), 2);
        // One unit on each route: 0 → 1 and 0 → 2 keep 1 of 2, 1 → 3 is full, 2 → 3 keeps 1.
        let residuals = |u| network.residuals(u).collect::<Vec<_>>();
        assert_eq!((residuals(0), residuals(1), residuals(2)), (vec![1, 1], vec![1, 0], vec![1, 1]));
    }
}
