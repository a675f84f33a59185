// Says so when the gateway stops answering while a page is open, and keeps the network
// page's node and chain states current. Optional: every page works without it.
(function () {
  "use strict";
  var banner = document.getElementById("gateway-banner");
  var back = document.getElementById("gateway-back");
  if (!banner || !window.fetch || !window.AbortController) { return; }
  var live = document.getElementById("live-network");
  var every = 5000;
  var url = live ? "/portal/network/status" : "/portal/status";
  var downSince = null;

  function setState(cell, state) {
    if (!cell) { return; }
    cell.textContent = state;
    cell.className = "state-" + state;
  }

  function nodeRows() {
    return Array.prototype.slice.call(document.querySelectorAll("tr[data-testid=node-row]"));
  }

  function showNode(row, node) {
    var cells = row.getElementsByTagName("td");
    var state = node ? node.state : "unknown";
    row.setAttribute("data-state", state);
    setState(cells[1], state);
    if (node && node.state === "up") {
      cells[2].textContent = node.used;
      cells[3].textContent = String(node.blocks);
    } else {
      cells[2].textContent = "—";
      cells[3].textContent = "—";
    }
  }

  function down() {
    if (downSince === null) {
      downSince = new Date();
      back.textContent = "";
      banner.textContent = "The gateway is not answering (since " + downSince.toLocaleTimeString() +
        "). Records, consents and sign-in need it: this page shows what was true when it loaded, " +
        "and will say when the gateway is back.";
      banner.hidden = false;
    }
    setState(document.querySelector("[data-testid=gateway-state]"), "down");
    if (live) { nodeRows().forEach(function (row) { showNode(row, null); }); }
  }

  function up(doc) {
    if (downSince !== null) {
      downSince = null;
      banner.hidden = true;
      banner.textContent = "";
      back.textContent = "The gateway is answering again.";
    }
    setState(document.querySelector("[data-testid=gateway-state]"), "up");
    if (!live || !doc.nodes) { return; }
    var byUrl = {};
    doc.nodes.forEach(function (node) { byUrl[node.url] = node; });
    nodeRows().forEach(function (row) { showNode(row, byUrl[row.getAttribute("data-url")]); });
    var height = document.querySelector("[data-testid=chain-height]");
    if (height) { height.textContent = doc.height === null ? "not answering" : String(doc.height); }
  }

  async function poll() {
    var control = new AbortController();
    var timer = setTimeout(function () { control.abort(); }, 4000);
    try {
      var answer = await fetch(url, { cache: "no-store", signal: control.signal });
      if (!answer.ok) { throw new Error("status " + answer.status); }
      up(await answer.json());
    } catch (e) {
      down();
    } finally {
      clearTimeout(timer);
      setTimeout(poll, every);
    }
  }
  setTimeout(poll, every);
})();
