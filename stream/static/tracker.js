/*! appetence tracker: page views, clicks and banner impressions to the collector.
 * No dependencies. Include it with
 *   <script src="https://collector.example/tracker.js" async
 *           data-site="recipes.example" data-user-id="(optional, your logged-in id)"></script>
 * Elements carrying data-item-id (and data-item-type, data-category, data-tags="a,b") send a
 * click when clicked; elements carrying data-banner-id send an impression once at least half
 * of them is visible, and a click when clicked. Without data-user-id an anonymous id is kept
 * in a first-party cookie (appetence_uid, 1 year). Events are batched and sent every second,
 * and when the page is hidden or left, with navigator.sendBeacon (fetch keepalive otherwise).
 * The body is sent as text/plain so that no CORS preflight is needed.
 * On a recipe or product page, data-item-id and data-item-type on the script tag make its
 * page view count as a view of that item.
 * Public API: window.appetence.track(event) and window.appetence.flush().
 */
(function () {
  "use strict";
  if (window.appetence && window.appetence.track) return;
  var script = document.currentScript;
  var data = (script && script.dataset) || {};
  var endpoint = data.endpoint || (script ? new URL("/v1/events", script.src).href : "/v1/events");
  var site = data.site || location.hostname;
  var COOKIE = "appetence_uid";
  var MAX_BATCH = 50;
  var queue = [];
  var sessionId = null;
  var counter = 0;

  function randomId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var out = "";
    for (var i = 0; i < 4; i++) out += Math.floor(Math.random() * 0x100000000).toString(16);
    return out;
  }
  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
    }
    return null;
  }
  function userId() {
    if (data.userId) return data.userId;
    var id = readCookie(COOKIE);
    if (!id) {
      id = "anon-" + randomId();
      document.cookie = COOKIE + "=" + encodeURIComponent(id) +
        "; Max-Age=31536000; Path=/; SameSite=Lax" + (location.protocol === "https:" ? "; Secure" : "");
    }
    return id;
  }
  function session() {
    try {
      var stored = JSON.parse(sessionStorage.getItem("appetence_session") || "null");
      var now = Date.now();
      if (!stored || now - stored.at > 30 * 60 * 1000) stored = { id: randomId(), at: now };
      stored.at = now;
      sessionStorage.setItem("appetence_session", JSON.stringify(stored));
      return stored.id;
    } catch (e) {
      return sessionId || (sessionId = randomId());
    }
  }
  function device() {
    var ua = navigator.userAgent || "";
    if (/iPad|Tablet/i.test(ua)) return "tablet";
    if (/Mobi|Android|iPhone/i.test(ua)) return "mobile";
    return "desktop";
  }
  function referrerOrigin() {
    // Only the origin (scheme and host), never the path or query: the worker classifies it
    // (search / social / other; none = direct).
    try { return document.referrer ? new URL(document.referrer).origin : null; }
    catch (e) { return null; }
  }
  function track(event) {
    var base = {
      event_id: randomId() + "-" + (++counter),
      ts: Date.now(),
      user_id: userId(),
      session_id: session(),
      site: site,
      device: device()
    };
    var referrer = referrerOrigin();
    if (referrer) base.referrer = referrer;
    for (var key in event) if (Object.prototype.hasOwnProperty.call(event, key)) base[key] = event[key];
    queue.push(base);
    if (queue.length >= MAX_BATCH) flush(false);
  }
  function flush(leaving) {
    if (!queue.length) return;
    var body = JSON.stringify(queue.splice(0, MAX_BATCH));
    var blob = new Blob([body], { type: "text/plain" });
    if (leaving && navigator.sendBeacon && navigator.sendBeacon(endpoint, blob)) return;
    if (window.fetch) {
      fetch(endpoint, { method: "POST", body: body, keepalive: true, mode: "cors",
                        credentials: "omit", headers: { "Content-Type": "text/plain" } })
        .catch(function () { /* best effort: analytics never breaks the page */ });
    } else if (navigator.sendBeacon) {
      navigator.sendBeacon(endpoint, blob);
    }
  }
  function describe(element, itemType) {
    var out = { item_id: element.dataset.itemId || element.dataset.bannerId };
    out.item_type = itemType || element.dataset.itemType || "recipe";
    if (element.dataset.category) out.category = element.dataset.category;
    if (element.dataset.tags) out.tags = element.dataset.tags.split(",").filter(Boolean).slice(0, 32);
    if (element.dataset.placement) out.placement = element.dataset.placement;
    if (element.dataset.position) out.position = parseInt(element.dataset.position, 10) || 0;
    return out;
  }
  document.addEventListener("click", function (e) {
    var element = e.target && e.target.closest && e.target.closest("[data-item-id],[data-banner-id]");
    if (!element) return;
    var event = describe(element, element.dataset.bannerId ? "banner" : null);
    event.type = "click";
    track(event);
    flush(true); // a click often navigates away: send now
  }, true);
  var seenBanners = {};
  function impression(element) {
    var id = element.dataset.bannerId;
    if (!id || seenBanners[id]) return;
    seenBanners[id] = true;
    var event = describe(element, "banner");
    event.type = "impression";
    track(event);
  }
  function watchBanners() {
    var banners = document.querySelectorAll("[data-banner-id]");
    if (!window.IntersectionObserver) { banners.forEach(impression); return; }
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) { impression(entry.target); observer.unobserve(entry.target); }
      });
    }, { threshold: 0.5 });
    banners.forEach(function (b) { observer.observe(b); });
  }
  // A recipe or product page says so on the script tag (data-item-id, data-item-type).
  var page = { type: "pageview", item_type: data.itemType || "page",
               item_id: data.itemId || location.pathname.slice(0, 128) || "/" };
  if (data.category) page.category = data.category;
  track(page);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", watchBanners);
  else watchBanners();
  setInterval(function () { flush(false); }, 1000);
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flush(true);
  });
  window.addEventListener("pagehide", function () { flush(true); });
  window.appetence = { track: track, flush: function () { flush(false); }, userId: userId };
})();
