"""Not part of fergate: the root of its repository, made a package so that a clone cannot
shadow the library.

A script run in the folder that holds a clone named `fergate/` (`git clone ... fergate`) finds
that folder first on its path; without this file Python would import the clone as an empty
namespace package (`module 'fergate' has no attribute 'load'`) before looking at the installed
fergate, since an editable install's finder comes after the path's. Imported as `fergate`, this
file loads the package inside the clone (`fergate/fergate/`) in its place, so `import fergate`
and `python -m fergate` work there too. Anywhere else it is never imported: the repository
root holds the package, not the reverse.
"""

import importlib.util
import os
import sys

if __name__ == "fergate":
    _inner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fergate")
    _spec = importlib.util.spec_from_file_location("fergate", os.path.join(_inner, "__init__.py"),
                                                   submodule_search_locations=[_inner])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["fergate"] = _module  # what `import fergate` returns once this file has run
    _spec.loader.exec_module(_module)
