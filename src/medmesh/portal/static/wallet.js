// Sign in with a browser wallet (EIP-1193, EIP-4361): optional; the form works without it.
(function () {
  "use strict";
  var button = document.getElementById("wallet-signin");
  var form = document.getElementById("wallet-form");
  if (!button || !form || !window.ethereum) { return; }
  button.hidden = false;
  button.addEventListener("click", async function () {
    try {
      var accounts = await window.ethereum.request({ method: "eth_requestAccounts" });
      var address = accounts[0];
      var answer = await fetch("/portal/signin/wallet/message?address=" + encodeURIComponent(address));
      var text = (await answer.json()).message;
      var signature = await window.ethereum.request({ method: "personal_sign", params: [text, address] });
      document.getElementById("message").value = text;
      document.getElementById("signature").value = signature;
      form.submit();
    } catch (e) {
      button.textContent = "Wallet sign-in failed: try again";
    }
  });
})();
