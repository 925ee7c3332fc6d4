"use strict";
// Polls the local API and renders it. Text goes in with textContent only.
function row(tbody, cells, cls) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = document.createElement("td");
    td.textContent = c;
    if (cls && cls[i]) td.className = cls[i];
    tr.appendChild(td);
  });
  tbody.appendChild(tr);
}
async function get(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}
async function refresh() {
  const err = document.getElementById("error");
  try {
    const [status, nodes] = await Promise.all([get("/v1/status"), get("/v1/nodes")]);
    document.getElementById("node").textContent =
      status.name + " · " + status.mesh_ip + " · cluster " + status.cluster_id;
    document.getElementById("raft").textContent =
      "Raft " + status.raft.state + ", leader " + (status.raft.leader || "none") +
      ", term " + status.raft.term + ", applied index " + status.raft.applied_index;
    const nb = document.querySelector("#nodes tbody");
    nb.replaceChildren();
    nodes.nodes.forEach(n => row(nb, [n.name, n.mesh_ip, n.pod_cidr, n.health, n.raft_role, n.version], [null, null, null, n.health]));
    const pb = document.querySelector("#peers tbody");
    pb.replaceChildren();
    status.peers.forEach(p => row(pb, [p.name, p.mesh_ip, p.endpoint,
      p.last_handshake_seconds < 0 ? "never" : Math.round(p.last_handshake_seconds) + "s ago", p.rx_bytes, p.tx_bytes]));
    err.hidden = true;
  } catch (e) {
    err.textContent = "cannot reach the agent: " + e.message;
    err.hidden = false;
  }
}
refresh();
setInterval(refresh, 2000);
