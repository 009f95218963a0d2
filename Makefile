# sysmon's packages, built from this checkout with Debian's own tools.
#
#   make packages   every package into dist/ (docs/deploy.md):
#                     dist/debian<N>/  sysmon, sysmon-handler, sysmon-netlog (.deb, arch all),
#                                      built by dpkg-buildpackage on this Debian N
#                     dist/rpm/        sysmon-handler, sysmon-netlog (Fedora templates) and
#                                      sysmon-dom0 (the Salt formula with the template
#                                      packages inside, the policy, netlog's backup)
#                     dist/sysmon-formula.tar.gz  the same formula, for a dom0 without the RPM
#   make lint       lintian and rpmlint on what dist/ holds
#   make clean
#
# VERSION comes from ./version and must match debian/changelog.  VERSION_SUFFIX
# (e.g. +test1) builds a newer version for the upgrade test.

SHELL := /bin/bash
VERSION := $(shell cat version)
VERSION_SUFFIX ?=
FULL_VERSION := $(VERSION)$(VERSION_SUFFIX)
RPM_VERSION := $(subst -,_,$(subst +,_,$(FULL_VERSION)))
DIST ?= dist
BUILD ?= build
B := $(abspath $(BUILD))
DEB_RELEASE := $(shell . /etc/os-release && echo "debian$${VERSION_ID%%.*}")
DEB_DIR := $(DIST)/$(DEB_RELEASE)
RPM_DIR := $(DIST)/rpm
# Debian's python3 first: pybuild fails under another python3 on PATH.
export PATH := /usr/bin:/bin:/usr/sbin:/sbin:$(PATH)

.PHONY: packages debs rpms formula lint clean src template-rpms formula-tree

packages: debs rpms formula

# A copy of the tracked and new files (not ignored ones: no venvs, no
# caches), so a build never writes into the checkout and uncommitted edits
# are what gets built.
src:
	rm -rf $(B)/src && mkdir -p $(B)/src
	git ls-files -z --cached --others --exclude-standard \
	    | tar --null --no-recursion -T - -c | tar -C $(B)/src -x
	test "$$(dpkg-parsechangelog -l debian/changelog -S Version)" = "$(VERSION)" \
	    || { echo "make: debian/changelog's version is not ./version ($(VERSION))" >&2; exit 1; }
	if [ -n "$(VERSION_SUFFIX)" ]; then \
	    sed -i '1s/($(VERSION))/($(FULL_VERSION))/' $(B)/src/debian/changelog; \
	    echo $(FULL_VERSION) > $(B)/src/version; fi

debs: src
	cd $(B)/src && dpkg-buildpackage -us -uc -b >$(B)/dpkg-buildpackage.log 2>&1 \
	    || { tail -n 40 $(B)/dpkg-buildpackage.log; exit 1; }
	mkdir -p $(DEB_DIR)
	rm -f $(DEB_DIR)/*.deb
	mv $(B)/sysmon*_$(FULL_VERSION)_all.deb $(DEB_DIR)/
	rm -f $(B)/sysmon_$(FULL_VERSION)_*.buildinfo $(B)/sysmon_$(FULL_VERSION)_*.changes
	@ls -1 $(DEB_DIR)

# Specs are rendered from rpm_spec/*.spec.in as qubes-builderv2 does
# (@VERSION@, @REL@); rpmbuild takes its sources from the copy.
define rpmbuild
	sed -e 's/@VERSION@/$(RPM_VERSION)/g' -e 's/@REL@/1/g' \
	    $(B)/src/rpm_spec/$(1).spec.in > $(B)/rpmbuild/SPECS/$(1).spec
	rpmbuild --quiet -bb --define "_topdir $(B)/rpmbuild" --define "_sourcedir $(B)/src" \
	    --define "_formuladir $(B)/formula" $(B)/rpmbuild/SPECS/$(1).spec
endef

template-rpms: src
	rm -rf $(B)/rpmbuild && mkdir -p $(B)/rpmbuild/SPECS
	$(call rpmbuild,sysmon-handler)
	$(call rpmbuild,sysmon-netlog)

# The Salt formula as dom0 gets it: the states, real files (no links into
# the source tree), and the template packages it installs.
formula-tree: debs template-rpms
	rm -rf $(B)/formula && mkdir -p $(B)/formula
	cp -r $(B)/src/salt/qubes $(B)/formula/
	mkdir -p $(B)/formula/qubes/monitor/packages
	cp $(DEB_DIR)/*.deb $(B)/rpmbuild/RPMS/noarch/*.rpm $(B)/formula/qubes/monitor/packages/
	cp $(B)/src/netlog/qubes-netlogs-backup $(B)/src/netlog/qubes-firewall-user-script \
	    $(B)/src/systemd/qubes-netlogs-backup.service $(B)/src/systemd/qubes-netlogs-backup.timer \
	    $(B)/formula/qubes/monitor/files/
	$(B)/src/salt/write-packages-yaml $(B)/formula/qubes/monitor/packages \
	    > $(B)/formula/qubes/monitor/packages.yaml
	if find $(B)/formula -type l | grep .; then echo "make: links in the formula" >&2; exit 1; fi

rpms: formula-tree
	$(call rpmbuild,sysmon-dom0)
	mkdir -p $(RPM_DIR)
	rm -f $(RPM_DIR)/*.rpm
	cp $(B)/rpmbuild/RPMS/noarch/*.rpm $(RPM_DIR)/
	@ls -1 $(RPM_DIR)

formula: formula-tree
	mkdir -p $(DIST)
	tar -C $(B)/formula --owner=0 --group=0 --sort=name --mtime=@0 -czf $(DIST)/sysmon-formula.tar.gz qubes
	@echo $(DIST)/sysmon-formula.tar.gz

lint:
	lintian --fail-on error,warning --display-info $(DIST)/debian*/*.deb
	rpmlint -r rpm_spec/sysmon.rpmlintrc $(RPM_DIR)/*.rpm

clean:
	rm -rf $(B) $(DIST)
