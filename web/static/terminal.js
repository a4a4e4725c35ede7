/* The browser door's client (terminal.html, watch.html): xterm.js on a WebSocket to the
   gateway, speaking the door's protocol (docs: the browser door contract).

   <main id="door" data-mode="vendor|observer" data-door-url="ws://..." data-ticket="..."
   data-style-nonce="...">. The first message is hello with the ticket and the terminal's
   size. Binary frames are terminal output (a UTF-8 stream: xterm.js decodes it, also
   across frame boundaries). Text frames are JSON: ready, notice (shown in yellow in the
   terminal), input (the moderation state: a banner), observers, end and error (shown in
   #door-status and in the terminal). A vendor's keystrokes and pastes go out as input,
   and resizes as resize; an observer sends nothing but end (the "End session" button).

   xterm.js creates <style> elements; the page's CSP admits only those carrying its
   nonce, so this file gives them the nonce before xterm.js starts. */
(function () {
  "use strict";

  var root = document.getElementById("door");
  var nonce = root.dataset.styleNonce;
  var createElement = Document.prototype.createElement;
  Document.prototype.createElement = function (name, options) {
    var el = createElement.call(this, name, options);
    if (nonce && String(name).toLowerCase() === "style") {
      el.setAttribute("nonce", nonce);
    }
    return el;
  };

  var vendor = root.dataset.mode === "vendor";
  var statusEl = document.getElementById("door-status");
  var inputEl = document.getElementById("door-input");
  var observersEl = document.getElementById("door-observers");
  var endButton = document.getElementById("door-end");
  var INPUT_CHUNK = 4096;
  var YELLOW = "\x1b[33m";
  var RED = "\x1b[1;31m";
  var RESET = "\x1b[0m";

  var term = new window.Terminal({
    cursorBlink: vendor,
    disableStdin: !vendor,
    scrollback: 5000,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
  });
  var fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();

  var socket = new WebSocket(root.dataset.doorUrl);
  socket.binaryType = "arraybuffer";
  var over = false;

  function status(text, ended) {
    statusEl.textContent = text;
    statusEl.classList.toggle("door-ended", Boolean(ended));
  }

  function line(color, text) {
    term.write("\r\n" + color + text + RESET + "\r\n");
  }

  function send(message) {
    if (!over && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
    }
  }

  function finish(title, message, reason) {
    over = true;
    var said = title + ": " + (message || reason || "no reason given");
    if (reason && message) {
      said += " (" + reason + ")";
    }
    status(said, true);
    inputEl.hidden = true;
    line(RED, said);
    if (endButton) {
      endButton.disabled = true;
    }
  }

  var handlers = {
    ready: function (m) {
      var text = (m.role === "observer" ? "Watching " : "Connected to ") + m.device;
      if (m.moderated) {
        text += " (moderated)";
      }
      status(text, false);
      if (vendor) {
        term.focus();
      } else if (m.cols && m.rows) {
        term.resize(m.cols, m.rows); // the vendor's terminal size, so lines wrap as theirs
      }
    },
    resize: function (m) {
      if (!vendor) {
        term.resize(m.cols, m.rows);
      }
    },
    notice: function (m) {
      line(YELLOW, m.text);
    },
    input: function (m) {
      inputEl.hidden = Boolean(m.allowed);
      inputEl.textContent = m.allowed ? "" : "Input paused: " + (m.reason || "");
    },
    observers: function (m) {
      var names = m.names || [];
      observersEl.textContent = names.length ? "Watching: " + names.join(", ") : "";
    },
    end: function (m) {
      finish("Session ended", m.message, m.reason);
    },
    error: function (m) {
      finish("Refused", m.message, m.reason);
    },
  };

  socket.addEventListener("open", function () {
    socket.send(
      JSON.stringify({ type: "hello", ticket: root.dataset.ticket, cols: term.cols, rows: term.rows })
    );
  });

  socket.addEventListener("message", function (event) {
    if (event.data instanceof ArrayBuffer) {
      term.write(new Uint8Array(event.data));
      return;
    }
    var message;
    try {
      message = JSON.parse(event.data);
    } catch (_err) {
      return;
    }
    var handle = handlers[message.type];
    if (handle) {
      handle(message);
    }
  });

  socket.addEventListener("close", function (event) {
    if (!over) {
      finish("Connection closed", event.reason, "code " + event.code);
    }
  });

  if (vendor) {
    // A paste can be long: at most INPUT_CHUNK characters (whole code points) a message,
    // so a frame stays far below the gateway's 64 KiB limit even when JSON escapes it.
    term.onData(function (data) {
      var chunk = "";
      var count = 0;
      for (var ch of data) {
        chunk += ch;
        count += 1;
        if (count === INPUT_CHUNK) {
          send({ type: "input", data: chunk });
          chunk = "";
          count = 0;
        }
      }
      if (chunk) {
        send({ type: "input", data: chunk });
      }
    });
    term.onResize(function (size) {
      send({ type: "resize", cols: size.cols, rows: size.rows });
    });
  }
  window.addEventListener("resize", function () {
    if (vendor) {
      fit.fit(); // a watcher keeps the vendor's size
    }
  });

  if (endButton) {
    endButton.addEventListener("click", function () {
      send({ type: "end" });
      endButton.disabled = true;
      status("Ending the session…", false);
    });
  }
})();
