// ipywidgets' embed manager (@jupyter-widgets/html-manager 1.0) typesets widget labels with the MathJax 2 API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, where that throws
// "Cannot read properties of undefined (reading 'Queue')". Route the call to MathJax 3. The embed manager
// renders widgets on window "load", after DOMContentLoaded, when MathJax 3 (a deferred script) has loaded.
document.addEventListener("DOMContentLoaded", function () {
  var mj = window.MathJax;
  if (!mj || !mj.startup || mj.Hub) return;
  mj.Hub = {
    Queue: function (job) {
      var element = job && job[2];
      if (element) mj.startup.promise = mj.startup.promise.then(function () { return mj.typesetPromise([element]); });
    }
  };
});
